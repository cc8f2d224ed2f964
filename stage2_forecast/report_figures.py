"""Figures of the HTML report that show sky frames and their cloud fraction (data and stage-2 sections).

Each builder returns a matplotlib figure (the report embeds it); frames come from the prepared arrays
(`rgb.npy` uint8, `thermal.npy` °C) and the cloud mask from the documented thermal rule `data.sky.cloud_mask`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.formats import SKY_PRESETS
from data.sky import cloud_mask
from sagecast_common.plots import pyplot
from stage2_forecast.report_inputs import Forecasts

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


def scan_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over presets (last axis) of the valid entries; NaN where none is valid."""
    total = np.where(valid, values, 0.0).sum(-1)
    count = valid.sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def cloud_fraction_days(fc: Forecasts, h: int, truth: pd.DataFrame | None):
    """Per test day: measured scan-mean cloud fraction vs each method's forecast made h steps earlier."""
    table, win = fc.table, fc.win
    horizon = fc.horizons_min[h]
    days = sorted(np.unique(table.day[win.anchor]))
    plt = pyplot()
    fig, axes = plt.subplots(len(days), 1, figsize=(10, 3.4 * len(days)), squeeze=False, layout="constrained")
    daylight = table.present & table.is_day
    measured = scan_mean(np.nan_to_num(table.cloud), daylight)
    for ax, day in zip(axes[:, 0], days, strict=True):
        scans = np.flatnonzero((table.day == day) & daylight.any(1))
        ax.plot(table.solar_hour[scans], measured[scans], color="k", lw=2, label="measured (thermal rule)")
        sel = table.day[win.anchor] == day
        tgt = win.tgt[sel, h]
        ok = tgt >= 0
        for name, nn in fc.nn_scan.items():
            valid = fc.mask[sel, h] & (nn[sel, h] >= 0)
            decoded = np.nan_to_num(table.cloud[np.maximum(nn[sel, h], 0), np.arange(len(SKY_PRESETS))])
            style = "--" if name == "persistence" else "-"
            ax.plot(table.solar_hour[tgt[ok]], scan_mean(decoded, valid)[ok], style, lw=1.2,
                    label=f"{name}, {horizon:g}-min forecast")
        _truth_lines(ax, truth, table, scans, horizon)
        date = pd.Timestamp.fromordinal(int(day)).date()
        ax.set(ylim=(-0.02, 1.02), xlabel="local solar hour", ylabel="cloud fraction", title=f"test day {date}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def _truth_lines(ax, truth: pd.DataFrame | None, table, scans: np.ndarray, horizon: float) -> None:
    """Synthetic runs: the generator's cloud fraction and any oracle forecasts (`oracle_*_cf_{h}`) for h."""
    if truth is None or not len(scans):
        return
    node = table.vsn[scans[0]]
    t0, t1 = table.time_ns[scans[0]], table.time_ns[scans[-1]] + int(horizon * 60e9)
    rows = truth[(truth["vsn"] == node) & truth["timestamp"].astype("int64").between(t0, t1)]
    rows = rows[rows["is_day"]] if "is_day" in rows else rows
    lon_shift = (table.solar_hour[scans[0]] - _utc_hour(table.time_ns[scans[0]])) % 24
    hour = lambda ns: (_utc_hour(ns) + lon_shift) % 24  # noqa: E731 - the node's solar-time offset
    per_loop = rows.groupby(rows["timestamp"].dt.floor("min")).mean(numeric_only=True)
    ns = per_loop.index.astype("int64").to_numpy()
    if "cloud_fraction" in per_loop:
        ax.plot(hour(ns), per_loop["cloud_fraction"], ":", color="0.4", label="generator truth")
    for col in sorted(c for c in per_loop.columns if c.startswith("oracle_") and c.endswith(f"_cf_{horizon:g}")):
        ax.plot(hour(ns + int(horizon * 60e9)), per_loop[col], ":", lw=1.5, label=f"{col} (synthetic oracle)")


def _utc_hour(ns) -> np.ndarray:
    return (np.asarray(ns, np.int64) % (86400 * 10**9)) / 3.6e12


def strip_anchors(fc: Forecasts, h: int, k: int = 4) -> list[tuple[int, int]]:
    """The fixed rule: the k (sample, preset) slots with the largest |cloud fraction change| from t to t + h,
    at most one per anchor scan."""
    table, win = fc.table, fc.win
    change = np.abs(table.cloud[win.tgt[:, h]] - table.cloud[win.anchor])  # (N, P)
    change = np.where(fc.mask[:, h] & np.isfinite(change), change, -1.0)
    order = np.argsort(-change, axis=None, kind="stable")
    picked, anchors = [], set()
    for flat in order:
        n, p = np.unravel_index(flat, change.shape)
        if change[n, p] < 0 or len(picked) == k:
            break
        if win.anchor[n] not in anchors:
            picked.append((int(n), int(p)))
            anchors.add(win.anchor[n])
    return picked


def forecast_strips(fc: Forecasts, h: int, rgb: np.ndarray, methods: list[str]):
    """Rows = anchors of `strip_anchors`; columns: frame at t, real frame at t+h, nearest real frame per method."""
    table, win = fc.table, fc.win
    picks = strip_anchors(fc, h)
    plt = pyplot()
    cols = 2 + len(methods)
    fig, axes = plt.subplots(max(len(picks), 1), cols, figsize=(2.1 * cols, 2.4 * max(len(picks), 1)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    horizon = fc.horizons_min[h]
    for row, (n, p) in zip(axes, picks, strict=False):
        a, t = win.anchor[n], win.tgt[n, h]
        cf = table.cloud
        _frame(row[0], rgb[table.rows[a, p]], f"t = {hhmm(table.solar_hour[a])}\npreset {SKY_PRESETS[p]}, "
               f"CF {cf[a, p]:.2f}")
        _frame(row[1], rgb[table.rows[t, p]], f"real t+{horizon:g} min\nCF {cf[t, p]:.2f}")
        for ax, name in zip(row[2:], methods, strict=True):
            s = fc.nn_scan[name][n, h, p]
            if s < 0:
                continue
            hit = " = real" if s == t else f" ({hhmm(table.solar_hour[s])})"
            _frame(ax, rgb[table.rows[s, p]], f"{name}: nearest{hit}\nd={fc.nn_dist[name][n, h, p]:.1f}, "
                   f"CF {cf[s, p]:.2f}")
    return fig


def _frame(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
