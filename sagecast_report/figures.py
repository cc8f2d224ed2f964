"""Figures of the HTML report that show sky frames and their cloud fraction (data and stage-2 sections).

Each builder returns a matplotlib figure (the report embeds it); frames come from the prepared arrays
(`rgb.npy` uint8, `thermal.npy` °C) and the cloud mask from the documented thermal rule `data.sky.cloud_mask`.
The stage-2 figures draw stage-2 evaluate's OUT/forecasts.parquet (stage2_forecast.forecast_table): one row per
scored slot and forecast, each forecast decoded to its nearest real frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.formats import SKY_PRESETS
from data.sky import cloud_mask
from sagecast_common.plots import pyplot

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
STRIP_TIMES = 6  # captures per preset across the chosen day
THERMAL_CMAP = "inferno"


def hhmm(hour: float) -> str:
    return f"{int(hour) % 24:02d}:{int(round(hour % 1 * 60)) % 60:02d}"


def thermal_rgb(thermal: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """°C (…, H, W) -> uint8 RGB through the thermal colour map on the fixed range [lo, hi]."""
    import matplotlib

    x = np.clip((np.asarray(thermal, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return (matplotlib.colormaps[THERMAL_CMAP](x)[..., :3] * 255).astype(np.uint8)


def mask_rgb(thermal: np.ndarray) -> np.ndarray:
    """Cloud mask of one frame (thermal rule) as uint8 RGB: cloud white, clear sky dark blue."""
    m = cloud_mask(np.asarray(thermal, np.float32))
    return np.where(m[..., None], np.uint8(255), np.array([20, 40, 110], np.uint8)).astype(np.uint8)


def strip_day(rows: pd.DataFrame) -> str:
    """The fixed rule for the data strip: the local day whose daytime cloud fractions span the widest range."""
    day = rows[rows["is_day"]]
    spread = day.groupby("local_date")["cloud_fraction"].agg(lambda c: np.nanmax(c) - np.nanmin(c))
    return str(spread.idxmax() if len(spread) else rows["local_date"].iloc[0])


def data_strip(index: pd.DataFrame, rgb: np.ndarray, thermal: np.ndarray, vsn: str):
    """One node, one day: a row per sky preset, STRIP_TIMES daytime captures, each RGB | thermal | cloud mask."""
    rows = index[index["vsn"] == vsn]
    date = strip_day(rows)
    day = rows[(rows["local_date"] == date) & rows["is_day"]]
    times = pd.DatetimeIndex(day["timestamp"].unique()).sort_values()
    picks = times[np.linspace(0, len(times) - 1, min(STRIP_TIMES, len(times))).round().astype(int)]
    S = rgb.shape[1]
    gap = max(S // 8, 2)
    presets = [p for p in SKY_PRESETS if (day["position"] == p).any()]
    shown = [day[day["position"] == p].set_index("timestamp")["row"] for p in presets]
    values = thermal[np.concatenate([s.to_numpy() for s in shown])] if shown else np.zeros((1, S, S))
    lo, hi = np.nanpercentile(values.astype(np.float32), [2, 98])
    cell_w = 3 * S + 2 * (gap // 2) + gap
    canvas = np.full((len(presets) * (S + gap), len(picks) * cell_w, 3), 255, np.uint8)
    for i, series in enumerate(shown):
        for j, t in enumerate(picks):
            nearest = series.index[np.abs(series.index - t).argmin()]
            r = int(series[nearest])
            y, x = i * (S + gap), j * cell_w
            for k, img in enumerate((rgb[r], thermal_rgb(thermal[r], lo, hi), mask_rgb(thermal[r]))):
                x0 = x + k * (S + gap // 2)
                canvas[y:y + S, x0:x0 + S] = img
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(2.2 * len(picks) + 1, 14), 0.75 * len(presets) + 1.2), layout="constrained")
    ax.imshow(canvas, interpolation="nearest")
    solar = day.groupby("timestamp")["solar_hour"].first()
    ax.set_xticks([j * cell_w + cell_w / 2 for j in range(len(picks))], [hhmm(solar[t]) for t in picks])
    ax.set_yticks([i * (S + gap) + S / 2 for i in range(len(presets))], [f"preset {p}" for p in presets])
    ax.tick_params(length=0)
    ax.set_xlabel("local solar time")
    ax.set_title(f"{vsn}, {date}: each cell RGB | thermal ({lo:.0f}…{hi:.0f} °C) | cloud mask (thermal rule)",
                 fontsize=10)
    for side in ax.spines.values():
        side.set_visible(False)
    return fig


def day_night_timeline(index: pd.DataFrame):
    """Per node and local day: every scan at its local solar time, coloured by split; night captures grey."""
    plt = pyplot()
    nodes = sorted(index["vsn"].unique())
    n_days = [index.loc[index["vsn"] == v, "local_date"].nunique() for v in nodes]
    fig, axes = plt.subplots(len(nodes), 1, figsize=(10, 0.9 + 0.35 * sum(n_days) + 0.4 * len(nodes)),
                             squeeze=False, layout="constrained")
    for ax, vsn in zip(axes[:, 0], nodes, strict=True):
        rows = index[index["vsn"] == vsn].drop_duplicates(["local_date", "timestamp"])
        dates = sorted(rows["local_date"].astype(str).unique())
        y = rows["local_date"].astype(str).map({d: i for i, d in enumerate(dates)})
        night = ~rows["is_day"].to_numpy(bool)
        ax.scatter(rows["solar_hour"][night], y[night], s=6, marker="|", color="0.7", label="night")
        for split, colour in SPLIT_COLOURS.items():
            sel = rows["is_day"].to_numpy(bool) & (rows["split"] == split).to_numpy()
            if sel.any():
                ax.scatter(rows["solar_hour"][sel], y[sel], s=6, marker="|", color=colour, label=f"day, {split}")
        ax.set_yticks(range(len(dates)), dates)
        ax.set(xlim=(0, 24), xticks=range(0, 25, 3), xlabel="local solar hour", title=vsn)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, markerscale=3)
    return fig


def labels(forecasts: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(method, run) -> legend label, in the table's order: the method's name, or the run folder's name where a
    method has several runs (seeds)."""
    pairs = forecasts[["method", "run"]].drop_duplicates()
    runs = pairs["method"].value_counts()
    return {(m, r): (r if runs[m] > 1 and r else m) for m, r in pairs.itertuples(index=False)}


def cloud_fraction_days(fc: pd.DataFrame, shown: dict[tuple[str, str], str], truth: pd.DataFrame | None):
    """Per evaluation day, at one horizon (`fc` holds its rows): the measured preset-mean cloud fraction of the
    target frames vs each shown method's forecast made that horizon earlier (its nearest real frames' mean)."""
    horizon = float(fc["horizon_min"].iloc[0])
    days = sorted(fc["date"].unique())
    plt = pyplot()
    fig, axes = plt.subplots(len(days), 1, figsize=(10, 3.4 * len(days)), squeeze=False, layout="constrained")
    for ax, day in zip(axes[:, 0], days, strict=True):
        rows = fc[fc["date"] == day]
        first = rows[(rows["method"] == rows["method"].iloc[0]) & (rows["run"] == rows["run"].iloc[0])]
        measured = first.groupby("target_time").agg(hour=("target_solar_hour", "first"),
                                                    cf=("target_cloud_fraction", lambda c: c.fillna(0).mean()))
        ax.plot(measured["hour"], measured["cf"], color="k", lw=2, label="measured (thermal rule)")
        for (method, run), label in shown.items():
            mine = rows[(rows["method"] == method) & (rows["run"] == run)]
            per = mine.groupby("sample").agg(hour=("target_solar_hour", "first"),
                                             cf=("nearest_cloud_fraction", lambda c: c.fillna(0).mean()))
            ax.plot(per["hour"], per["cf"], "--" if method == "persistence" else "-", lw=1.2,
                    label=f"{label}, {horizon:g}-min forecast")
        _truth_lines(ax, truth, first, horizon)
        ax.set(ylim=(-0.02, 1.02), xlabel="local solar hour", ylabel="cloud fraction", title=f"test day {day}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def _truth_lines(ax, truth: pd.DataFrame | None, rows: pd.DataFrame, horizon: float) -> None:
    """Synthetic runs: the generator's cloud fraction and any oracle forecasts (`oracle_*_cf_{h}`) for h."""
    if truth is None or not len(rows):
        return
    t0 = rows["anchor_time"].min().value
    t1 = rows["target_time"].max().value
    sel = truth[(truth["vsn"] == rows["vsn"].iloc[0]) & truth["timestamp"].astype("int64").between(t0, t1)]
    sel = sel[sel["is_day"]] if "is_day" in sel else sel
    lon_shift = (rows["target_solar_hour"].iloc[0] - _utc_hour(rows["target_time"].iloc[0].value)) % 24
    hour = lambda ns: (_utc_hour(ns) + lon_shift) % 24  # noqa: E731 - the node's solar-time offset
    per_loop = sel.groupby(sel["timestamp"].dt.floor("min")).mean(numeric_only=True)
    ns = per_loop.index.astype("int64").to_numpy()
    if "cloud_fraction" in per_loop:
        ax.plot(hour(ns), per_loop["cloud_fraction"], ":", color="0.4", label="generator truth")
    for col in sorted(c for c in per_loop.columns if c.startswith("oracle_") and c.endswith(f"_cf_{horizon:g}")):
        ax.plot(hour(ns + int(horizon * 60e9)), per_loop[col], ":", lw=1.5, label=f"{col} (synthetic oracle)")


def _utc_hour(ns) -> np.ndarray:
    return (np.asarray(ns, np.int64) % (86400 * 10**9)) / 3.6e12


def strip_anchors(slots: pd.DataFrame, k: int = 4) -> pd.DataFrame:
    """The fixed rule: the k slots (rows of one method at one horizon, in sample-then-preset order) with the
    largest |cloud fraction change| from t to t + h, at most one per anchor scan."""
    change = (slots["target_cloud_fraction"] - slots["anchor_cloud_fraction"]).abs()
    order = change[np.isfinite(change)].sort_values(ascending=False, kind="stable").index
    ranked = slots.loc[order]
    return ranked.drop_duplicates(["vsn", "anchor_time"]).head(k)


def forecast_strips(fc: pd.DataFrame, rgb: np.ndarray, shown: dict[tuple[str, str], str]):
    """Rows = anchors of `strip_anchors`; columns: frame at t, real frame at t+h, nearest real frame per method."""
    first = fc[(fc["method"] == fc["method"].iloc[0]) & (fc["run"] == fc["run"].iloc[0])]
    picks = strip_anchors(first)
    by_slot = fc.set_index(["method", "run", "sample", "preset"])
    plt = pyplot()
    cols = 2 + len(shown)
    fig, axes = plt.subplots(max(len(picks), 1), cols, figsize=(2.1 * cols, 2.4 * max(len(picks), 1)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    horizon = float(fc["horizon_min"].iloc[0])
    for row, pick in zip(axes, picks.itertuples(index=False), strict=False):
        _frame(row[0], rgb[pick.anchor_row], f"t = {hhmm(pick.anchor_solar_hour)}\npreset {pick.preset}, "
               f"CF {pick.anchor_cloud_fraction:.2f}")
        _frame(row[1], rgb[pick.target_row], f"real t+{horizon:g} min\nCF {pick.target_cloud_fraction:.2f}")
        for ax, ((method, run), label) in zip(row[2:], shown.items(), strict=True):
            key = (method, run, pick.sample, pick.preset)
            if key not in by_slot.index:
                continue
            s = by_slot.loc[key]
            hit = " = real" if s["nearest_time"] == pick.target_time else f" ({hhmm(s['nearest_solar_hour'])})"
            _frame(ax, rgb[s["nearest_row"]], f"{label}: nearest{hit}\nd={s['nearest_distance']:.1f}, "
                   f"CF {s['nearest_cloud_fraction']:.2f}")
    return fig


def _frame(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
