"""The forecasts stage-2 evaluate scored, as one table with a method axis: OUT/forecasts.parquet.

Written by `stage2_forecast.evaluate` next to scores.json; the HTML report (`sagecast_report`) draws its forecast
figures from it and never re-runs a model. A forecast is an embedding; the table decodes it to the real frame
of the same preset and local day whose standardised embedding is nearest (the pool the retrieval metric ranks
against), so a reader can show that frame and its measured cloud fraction. One row per scored slot
(sample, horizon, preset: a daytime target whose preset was seen at t) and forecast:

  method, run                   method name; for a trained forecaster also its run folder's name ("" for baselines)
  sample, vsn, date             window index, node, local date of the anchor scan
  horizon_min, preset           forecast horizon, sky preset (position)
  anchor_* / target_*           time (first capture of the scan, UTC), solar_hour, row (of the prepared arrays),
                                cloud_fraction (prepared index) of the frame at t and of the real frame at t + h
  nearest_*                     the same for the decoded forecast, plus nearest_distance (standardised embedding)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.formats import SKY_PRESETS
from sagecast_common.runio import atomic_path
from stage2_forecast import samples


def nearest_frames(pred: np.ndarray, table: samples.ScanTable, win: samples.Windows,
                   mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each valid slot of `pred` (N, H, P, D), the same-day same-preset daytime scan nearest to the forecast
    (-1 where masked) and its Euclidean distance, both (N, H, P)."""
    scan = np.full(mask.shape, -1, np.int64)
    dist = np.full(mask.shape, np.nan, np.float32)
    scans = np.arange(len(table.time_ns) - 1)
    day_t = table.day[win.tgt]  # (N, H)
    for p in range(mask.shape[2]):
        ok = table.present[scans, p] & table.is_day[scans, p]
        for day in np.unique(day_t[mask[:, :, p]]):
            cand = scans[ok & (table.day[scans] == day)]
            n, h = np.nonzero(mask[:, :, p] & (day_t == day))
            q, c = pred[n, h, p].astype(np.float64), table.z[cand, p].astype(np.float64)
            d2 = (q**2).sum(1)[:, None] + (c**2).sum(1)[None] - 2 * q @ c.T  # (M, C)
            best = d2.argmin(1)
            scan[n, h, p] = cand[best]
            dist[n, h, p] = np.sqrt(np.maximum(d2[np.arange(len(n)), best], 0.0))
    return scan, dist


def _frame_columns(prefix: str, table: samples.ScanTable, scan: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{prefix}_time": pd.to_datetime(table.time_ns[scan], utc=True),
            f"{prefix}_solar_hour": table.solar_hour[scan], f"{prefix}_row": table.rows[scan, p],
            f"{prefix}_cloud_fraction": table.cloud[scan, p]}


def forecast_rows(method: str, run: str, pred: np.ndarray, table: samples.ScanTable, win: samples.Windows,
                  mask: np.ndarray) -> pd.DataFrame:
    """The rows of one forecast `pred` (N, H, P, D): its valid slots in (sample, horizon, preset) order."""
    scan, dist = nearest_frames(pred, table, win, mask)
    n, h, p = np.nonzero(mask)
    anchor, target = win.anchor[n], win.tgt[n, h]
    days, which = np.unique(table.day[anchor], return_inverse=True)
    dates = np.array([pd.Timestamp.fromordinal(int(d)).date().isoformat() for d in days], dtype=object)
    return pd.DataFrame({"method": method, "run": run, "sample": n.astype(np.int32),
                         "vsn": table.vsn[anchor].astype(str), "date": dates[which],
                         "horizon_min": np.asarray(win.horizons_min, np.float32)[h],
                         "preset": np.asarray(SKY_PRESETS, np.int16)[p],
                         **_frame_columns("anchor", table, anchor, p), **_frame_columns("target", table, target, p),
                         **_frame_columns("nearest", table, scan[n, h, p], p),
                         "nearest_distance": dist[n, h, p]})


def write_forecasts(path: Path, preds: dict[str, list[np.ndarray]], runs: dict[str, list[str]],
                    table: samples.ScanTable, win: samples.Windows, mask: np.ndarray) -> None:
    """OUT/forecasts.parquet, atomically: every member of every method (`runs[method]` names the members)."""
    parts = [forecast_rows(method, run, pred, table, win, mask)
             for method, members in preds.items()
             for pred, run in zip(members, runs.get(method, [""] * len(members)), strict=True)]
    with atomic_path(path) as tmp:
        pd.concat(parts, ignore_index=True).to_parquet(tmp, index=False)
