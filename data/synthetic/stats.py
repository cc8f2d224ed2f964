"""Weather and forecastability of a synthetic run: `python -m data.synthetic.stats RAW [--out DIR]`.

Reads `RAW/<VSN>/truth.parquet` (+ `.synthetic.json`) of every node and prints and writes (to --out, default
RAW) `synthetic_stats_days.csv` (per local day: regime, mean daytime cover and its class clear < 0.15 ≤ broken
≤ 0.85 < overcast, mean low/high wind speed), `synthetic_stats_groups.csv` (per regime, and for slow cumulus /
stratocumulus days (low wind ≤ 7 m/s) and fast cumulus days (≥ 11 m/s): lag autocorrelation of the per-preset
cloud-fraction anomaly (preset minus the mean of the 8 presets at that loop) at 5/15/30/60 min, and the
oracles' skill vs persistence 1 − MSE/MSE_persistence on per-preset cloud fraction at those horizons) and
`synthetic_stats.json` (both tables). Pairs (t, t + h) count only within one local day; all hours count (the
truth is geometric, not a camera's), cover means use daytime captures.

It also writes `synthetic_stats_oracles.csv`: per group (each regime, and `all`) × row of the target preset
(`sky`, `horizon`) × horizon × oracle (`advect`, `view` = view-limited with the sky row, `view_horizon` = with
the sky and horizon rows; data.synthetic.oracle), the share of the target's pixels those views saw, and each
oracle's skill vs persistence in cloud-fraction MAE (1 − MAE/MAE_persistence) and MSE, with 95 % intervals
from a day bootstrap (whole local days resampled, BOOT draws, seed 0); `synthetic_stats_diurnal.csv`: mean
true cloud fraction of the sky-row captures per local-solar-hour bin (DIURNAL_BIN_H hours; mean solar time
at the node's registry longitude) per regime; and in `synthetic_stats.json` also `view_horizon_gain_15`
(per row: MAE of `view_horizon` minus MAE of `view` at 15 min, negative = the horizon row helps, with its
day-bootstrap interval) and `camera_r2`: how well a linear map of a daytime picture's mean R, G, B (the
optical left half of the JPG) gives the true cloud fraction, fitted on the even-numbered and scored (R²) on
the odd-numbered days of a sample of at most CAMERA_SAMPLE captures, or "no pictures (truth-only run)".
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data.formats import parse_mobotix_name, preset_row, split_ts_name
from data.sage.registry import node_period
from data.synthetic.layout import day_spans
from data.synthetic.oracle import HORIZONS_MIN, SEEN_SHARE, VIEW_SETS
from sagecast_common.bootstrap import interval, replicate_totals
from sagecast_common.cli import make_parser
from sagecast_common.runio import atomic_path, atomic_write_json

SLOW_MS, FAST_MS = 7.0, 11.0  # the slower and faster thirds of the 5–15 m/s low-cloud winds (SAGE_DATA.md §8)
BOOT = 1000  # day-bootstrap draws
ORACLES = ("advect", *VIEW_SETS)
DIURNAL_BIN_H = 2
CAMERA_SAMPLE = 2000
NO_PICTURES = "no pictures (truth-only run)"


def _with_days(truth: pd.DataFrame, vsn: str, local_dates: list[str]) -> pd.DataFrame:
    spans = day_spans(vsn, dt.date.fromisoformat(local_dates[0]), len(local_dates))
    starts = np.array([a for _, a, _ in spans])
    idx = np.clip(np.searchsorted(starts, truth["ts_ns"].to_numpy(), side="right") - 1, 0, len(spans) - 1)
    return truth.assign(day=[str(spans[i][0]) for i in idx], vsn=vsn)


def day_table(truth: pd.DataFrame) -> pd.DataFrame:
    """One row per (vsn, local day): regime, mean daytime cover, its class, mean wind speeds."""
    t = truth.assign(low_speed=np.hypot(truth.wind_u, truth.wind_v),
                     high_speed=np.hypot(truth.high_wind_u, truth.high_wind_v))
    rows = []
    for (vsn, day), g in t.groupby(["vsn", "day"], sort=True):
        lit = g[g.is_day] if g.is_day.any() else g
        cover = float(lit.cloud_fraction.mean())
        rows.append({"vsn": vsn, "day": day, "regime": lit.regime.mode().iloc[0], "mean_day_cover": round(cover, 3),
                     "cover_class": "clear" if cover < 0.15 else ("overcast" if cover > 0.85 else "broken"),
                     "low_wind_ms": round(float(lit.low_speed.mean()), 1),
                     "high_wind_ms": round(float(lit.high_speed.mean()), 1) if lit.high_cover.max() > 0 else None})
    return pd.DataFrame(rows)


def _pairs(truth: pd.DataFrame, lag: int, later=("cloud_fraction", "anomaly")) -> pd.DataFrame:
    """Rows of t joined with the same preset `lag` loops later on the same node and day (suffix _h)."""
    keep = ["vsn", "day", "position", "loop_num", *later]
    later = truth[keep].assign(loop_num=truth.loop_num - lag)
    return truth.merge(later, on=["vsn", "day", "position", "loop_num"], suffixes=("", "_h"))


def group_table(truth: pd.DataFrame, days: pd.DataFrame, interval_min: float) -> pd.DataFrame:
    """Per group of days: anomaly autocorrelation and oracle skill at each horizon (see module doc)."""
    mean = truth.groupby(["vsn", "loop_num"]).cloud_fraction.transform("mean")
    truth = truth.assign(anomaly=truth.cloud_fraction - mean)
    info = days.set_index(["vsn", "day"])
    base = info.regime.str.replace("+cirrus", "", regex=False)
    groups = {r: info.regime == r for r in sorted(info.regime.unique())}
    groups[f"slow Cu/Sc (≤ {SLOW_MS:g} m/s)"] = base.isin(["cumulus", "stratocumulus"]) & (info.low_wind_ms <= SLOW_MS)
    groups[f"fast Cu (≥ {FAST_MS:g} m/s)"] = (base == "cumulus") & (info.low_wind_ms >= FAST_MS)
    pairs = {h: _pairs(truth, round(h / interval_min)) for h in HORIZONS_MIN
             if math.isclose(h / interval_min, round(h / interval_min))}
    rows = []
    for name, member in groups.items():
        chosen = set(member[member].index)
        row = {"group": name, "days": len(chosen)}
        for h, p in pairs.items():
            p = p[[k in chosen for k in zip(p.vsn, p.day, strict=True)]]
            ok = len(p) > 2 and p.anomaly.std() > 0 and p.anomaly_h.std() > 0
            row[f"acf_{h}"] = round(float(np.corrcoef(p.anomaly, p.anomaly_h)[0, 1]), 3) if ok else None
            mse_p = float(((p.cloud_fraction - p.cloud_fraction_h) ** 2).mean()) if len(p) else math.nan
            for oracle in ("advect", "cover"):
                mse = float(((p[f"oracle_{oracle}_cf_{h}"] - p.cloud_fraction_h) ** 2).mean()) if len(p) else math.nan
                row[f"{oracle}_skill_{h}"] = round(1 - mse / mse_p, 3) if mse_p > 0 else None
        rows.append(row)
    return pd.DataFrame(rows)


def day_bootstrap(per_day: np.ndarray, stat, *, boot: int = BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5 %, 97.5 %) of `stat` over days resampled with replacement (sagecast_common.bootstrap).

    per_day: (D, k) sums per day (e.g. Σ|error|, count); `stat` maps summed rows (..., k) to a number each."""
    point, reps = replicate_totals({"sums": np.asarray(per_day, np.float64)[None]}, n_boot=boot, seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = stat(reps["sums"])
        lo, hi = interval(draws) if np.isfinite(draws).any() else (math.nan, math.nan)
        return float(stat(point["sums"])), float(lo), float(hi)


def _skill(sums: np.ndarray) -> np.ndarray:
    """1 − Σ error / Σ persistence error, from (..., 2) sums."""
    return 1.0 - sums[..., 0] / sums[..., 1]


def oracle_table(truth: pd.DataFrame, interval_min: float) -> pd.DataFrame:
    """Seen share and oracle skill vs persistence per group × row × horizon × oracle (see module doc)."""
    truth = truth.assign(row=[preset_row(p) for p in truth.position])
    regimes = sorted(truth.regime.unique())
    groups = [(r, [r]) for r in regimes] + [("all", regimes)]
    oracles = [o for o in ORACLES if f"oracle_{o}_cf_{HORIZONS_MIN[0]}" in truth]  # older runs lack some
    rows = []
    for h in HORIZONS_MIN:
        if not math.isclose(h / interval_min, round(h / interval_min)):
            continue
        pairs = _pairs(truth, round(h / interval_min), later=("cloud_fraction",))
        err = pd.DataFrame({"persistence": pairs.cloud_fraction - pairs.cloud_fraction_h}
                           | {o: pairs[f"oracle_{o}_cf_{h}"] - pairs.cloud_fraction_h for o in oracles})
        for (group, members), row in itertools.product(groups, sorted(pairs.row.dropna().unique())):
            chosen = (pairs.row == row) & pairs.regime.isin(members)
            if not chosen.any():
                continue
            day = (pairs.vsn + " " + pairs.day)[chosen].to_numpy()
            ae, se = err[chosen].abs().groupby(day).sum(), (err[chosen] ** 2).groupby(day).sum()
            n = int(chosen.sum())
            for o in oracles:
                mae = day_bootstrap(ae[[o, "persistence"]].to_numpy(), _skill)
                mse = day_bootstrap(se[[o, "persistence"]].to_numpy(), _skill)
                share = pairs[f"{SEEN_SHARE[o]}_{h}"][chosen].mean() if o in SEEN_SHARE else math.nan
                rows.append({"group": group, "row": row, "horizon_min": h, "oracle": o, "days": len(ae),
                             "pairs": n, "seen_share": share, "mae": ae[o].sum() / n,
                             "persistence_mae": ae.persistence.sum() / n, "mae_skill": mae[0],
                             "mae_skill_lo": mae[1], "mae_skill_hi": mae[2], "mse_skill": mse[0],
                             "mse_skill_lo": mse[1], "mse_skill_hi": mse[2]})
    return pd.DataFrame(rows).round(4)


def view_horizon_gain(truth: pd.DataFrame, interval_min: float, h: int = 15) -> list[dict]:
    """Per row: MAE of the sky + horizon view-limited oracle minus the sky-only one at h, day-bootstrapped."""
    if f"oracle_view_horizon_cf_{h}" not in truth or not math.isclose(h / interval_min, round(h / interval_min)):
        return []
    pairs = _pairs(truth.assign(row=[preset_row(p) for p in truth.position]), round(h / interval_min),
                   later=("cloud_fraction",))
    out = []
    for row, p in pairs.groupby("row", sort=True):
        diff = (p[f"oracle_view_horizon_cf_{h}"] - p.cloud_fraction_h).abs() - (
            p[f"oracle_view_cf_{h}"] - p.cloud_fraction_h).abs()
        per_day = pd.DataFrame({"diff": diff, "n": 1.0}).groupby((p.vsn + " " + p.day).to_numpy()).sum()
        est, lo, hi = day_bootstrap(per_day.to_numpy(), lambda x: x[..., 0] / x[..., 1])
        out.append({"row": row, "horizon_min": h, "days": len(per_day), "pairs": len(p),
                    "mae_difference": round(est, 5), "lo": round(lo, 5), "hi": round(hi, 5)})
    return out


def diurnal_table(truth: pd.DataFrame) -> pd.DataFrame:
    """Mean true cloud fraction of sky-row captures per local-solar-hour bin (columns) per regime and overall."""
    sky = truth[[preset_row(p) == "sky" for p in truth.position]]
    lon = {(v, d): node_period(v, pd.Timestamp(t, tz="UTC")).lon
           for (v, d), t in sky.groupby(["vsn", "day"]).ts_ns.first().items()}
    hours = (sky.ts_ns / 3.6e12 + np.array([lon[k] for k in zip(sky.vsn, sky.day, strict=True)]) / 15.0) % 24.0
    bins = (hours // DIURNAL_BIN_H).astype(int)
    labels = [f"{b * DIURNAL_BIN_H:02d}-{(b + 1) * DIURNAL_BIN_H:02d}" for b in range(24 // DIURNAL_BIN_H)]
    table = []
    for name, chosen in [(r, sky.regime == r) for r in sorted(sky.regime.unique())] + [("all", sky.regime.notna())]:
        means = sky.cloud_fraction[chosen].groupby(bins[chosen]).mean()
        days = sky[chosen].groupby(["vsn", "day"]).ngroups
        table.append({"regime": name, "days": days} | {lab: means.get(b, math.nan) for b, lab in enumerate(labels)})
    return pd.DataFrame(table).round(3)


def _pictures(raw: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """Daytime captures that have an intact RGB JPG, with its path (none in a --truth-only run)."""
    found = []
    for vsn in sorted(truth.vsn.unique()):
        node = Path(raw) / vsn
        faults = pd.read_csv(node / "faults.csv") if (node / "faults.csv").exists() else pd.DataFrame({"file": []})
        broken = set(faults.file)
        for path in (node / "rgb").glob("*.jpg") if (node / "rgb").is_dir() else []:
            if path.name not in broken and (stored := split_ts_name(path.name)):
                found.append((vsn, stored[0], parse_mobotix_name(stored[1]).position, path))
    files = pd.DataFrame(found, columns=["vsn", "ts_ns", "position", "path"])
    return truth[truth.is_day].merge(files, on=["vsn", "ts_ns", "position"])


def _mean_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.draft("RGB", (img.width // 8, img.height // 8))  # a mean needs no full-size decode
        pixels = np.asarray(img.convert("RGB"), np.float64)
    return pixels[:, : pixels.shape[1] // 2].reshape(-1, 3).mean(axis=0)  # the optical left half


def camera_r2(raw: Path, truth: pd.DataFrame, *, sample: int = CAMERA_SAMPLE, seed: int = 0) -> dict | str:
    """R² on held-out days of a linear map from a daytime picture's mean R, G, B to the true cloud fraction."""
    pics = _pictures(raw, truth)
    if pics.empty:
        return NO_PICTURES
    pics = pics.sample(min(sample, len(pics)), random_state=seed).sort_values(["vsn", "ts_ns", "position"])
    days = sorted(set(zip(pics.vsn, pics.day, strict=True)))
    if len(days) < 2:
        return "too few days with pictures (need 2: one to fit, one to score)"
    fit_days = set(days[::2])
    fit = np.array([(v, d) in fit_days for v, d in zip(pics.vsn, pics.day, strict=True)])
    x = np.column_stack([np.stack([_mean_rgb(p) for p in pics.path]), np.ones(len(pics))])
    y = pics.cloud_fraction.to_numpy()
    coef = np.linalg.lstsq(x[fit], y[fit], rcond=None)[0]
    resid, centred = y[~fit] - x[~fit] @ coef, y[~fit] - y[~fit].mean()
    return {"r2": round(float(1 - (resid**2).sum() / (centred**2).sum()), 4), "captures": len(pics),
            "fit_days": len(fit_days), "score_days": len(days) - len(fit_days)}


def load(raw: Path) -> tuple[pd.DataFrame, float]:
    """All nodes' truth with a local `day` column, and the run's scan interval (minutes)."""
    frames, intervals = [], set()
    for marker in sorted(Path(raw).glob("*/.synthetic.json")):
        run = json.loads(marker.read_text())
        if not run.get("complete"):
            raise ValueError(f"{marker.parent} is not a finished synthetic run")
        frames.append(_with_days(pd.read_parquet(marker.parent / "truth.parquet"), run["vsn"],
                                 run["summary"]["local_dates"]))
        intervals.add(float(run["interval_min"]))
    if not frames:
        raise ValueError(f"no synthetic node folders (with .synthetic.json) under {raw}")
    if len(intervals) > 1:
        raise ValueError(f"nodes under {raw} differ in --interval-min: {sorted(intervals)}")
    return pd.concat(frames, ignore_index=True), intervals.pop()


def _records(table: pd.DataFrame) -> list[dict]:
    return table.astype(object).where(table.notna(), None).to_dict("records")  # NaN is not JSON


def _skill_view(oracles: pd.DataFrame) -> pd.DataFrame:
    """The oracle table as printed: per group × row × horizon, seen shares and MAE skill [95 % interval]."""
    o = oracles.assign(cell=[f"{s:+.3f} [{lo:+.3f}, {hi:+.3f}]" for s, lo, hi in
                             zip(oracles.mae_skill, oracles.mae_skill_lo, oracles.mae_skill_hi, strict=True)])
    keys = ["group", "row", "horizon_min", "days"]
    cells = o.pivot(index=keys, columns="oracle", values="cell").add_prefix("mae_skill ")
    seen = o.dropna(subset=["seen_share"]).pivot(index=keys, columns="oracle", values="seen_share").add_prefix("seen ")
    return cells.join(seen)[[*seen.columns, *cells.columns]].reset_index()  # older runs have no seen shares


def main(argv: list[str] | None = None) -> dict:
    ap = make_parser("sagecast-synthetic-stats", __doc__)
    ap.add_argument("raw", type=Path, help="a folder written by sagecast-synthetic (python -m data.synthetic)")
    ap.add_argument("--out", type=Path, default=None, help="where to write the tables (default: RAW)")
    args = ap.parse_args(argv)
    try:
        truth, interval = load(args.raw)
    except ValueError as e:
        ap.error(str(e))
    days = day_table(truth)
    groups = group_table(truth, days, interval)
    oracles = oracle_table(truth, interval)
    diurnal = diurnal_table(truth)
    gain = view_horizon_gain(truth, interval)
    camera = camera_r2(args.raw, truth)
    out = args.out or args.raw
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("days", days), ("groups", groups), ("oracles", oracles), ("diurnal", diurnal)):
        with atomic_path(out / f"synthetic_stats_{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    shares = days.cover_class.value_counts(normalize=True).round(3).to_dict()
    result = {"interval_min": interval, "cover_class_share": shares, "days": days.to_dict("records"),
              "groups": groups.to_dict("records"), "oracles": _records(oracles), "diurnal": _records(diurnal),
              "view_horizon_gain_15": gain, "camera_r2": camera}
    atomic_write_json(out / "synthetic_stats.json", result)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_rows", 500):
        print(days.to_string(index=False), "\n\nshare of days:", shares, "\n")
        print(groups.to_string(index=False), "\n")
        if not oracles.empty:
            print("oracle skill vs persistence (cloud-fraction MAE; 95 % day-bootstrap interval):")
            print(_skill_view(oracles).to_string(index=False), "\n")
        print(f"mean true cloud fraction (sky row) per local solar hour ({DIURNAL_BIN_H} h bins):")
        print(diurnal.to_string(index=False), "\n")
        for g in gain:
            print(f"view-limited sky+horizon minus sky-only, MAE at {g['horizon_min']} min, {g['row']} row: "
                  f"{g['mae_difference']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}] ({g['days']} days)")
        print("camera R² (mean R, G, B -> true cloud fraction, other days):", camera)
    return result


def cli() -> None:
    """Console script `sagecast-synthetic-stats` (its exit status must not be the result dict)."""
    main()


if __name__ == "__main__":
    main()
