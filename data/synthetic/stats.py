"""Weather and forecastability of a synthetic run: `python -m data.synthetic.stats RAW [--out DIR]`.

Reads `RAW/<VSN>/truth.parquet` (+ `.synthetic.json`) of every node and prints and writes (to --out, default
RAW) `synthetic_stats_days.csv` (per local day: regime, mean daytime cover and its class clear < 0.15 ≤ broken
≤ 0.85 < overcast, mean low/high wind speed), `synthetic_stats_groups.csv` (per regime, and for slow cumulus /
stratocumulus days (low wind ≤ 4 m/s) and fast cumulus days (≥ 8 m/s): lag autocorrelation of the per-preset
cloud-fraction anomaly (preset minus the mean of the 8 presets at that loop) at 5/15/30/60 min, and the
oracles' skill vs persistence 1 − MSE/MSE_persistence on per-preset cloud fraction at those horizons) and
`synthetic_stats.json` (both tables). Pairs (t, t + h) count only within one local day; all hours count (the
truth is geometric, not a camera's), cover means use daytime captures.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from data.synthetic.layout import day_spans
from data.synthetic.oracle import HORIZONS_MIN
from sagecast_common.cli import make_parser
from sagecast_common.runio import atomic_path, atomic_write_json

SLOW_MS, FAST_MS = 4.0, 8.0


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


def _pairs(truth: pd.DataFrame, lag: int) -> pd.DataFrame:
    """Rows of t joined with the same preset `lag` loops later on the same node and day (suffix _h)."""
    keep = ["vsn", "day", "position", "loop_num", "cloud_fraction", "anomaly"]
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
    out = args.out or args.raw
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("days", days), ("groups", groups)):
        with atomic_path(out / f"synthetic_stats_{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    shares = days.cover_class.value_counts(normalize=True).round(3).to_dict()
    result = {"interval_min": interval, "cover_class_share": shares, "days": days.to_dict("records"),
              "groups": groups.to_dict("records")}
    atomic_write_json(out / "synthetic_stats.json", result)
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(days.to_string(index=False), "\n\nshare of days:", shares, "\n")
        print(groups.to_string(index=False))
    return result


def cli() -> None:
    """Console script `sagecast-synthetic-stats` (its exit status must not be the result dict)."""
    main()


if __name__ == "__main__":
    main()
