"""How far a forecast can go that moves whole views: truth-level ceilings of routing at view resolution.

    python -m stage2_forecast.ceilings --raw RUNS/compare/raw_train --forecasts RUNS/compare/report/forecasts.parquet

The headroom of `make compare` is measured against the pixel-level view-limited oracle (data.synthetic.oracle:
true wind, frozen field, every pixel the sky and horizon views saw at t, t − 5 and t − 10 min). The networks
see one embedding per view, so the advection path (stage2_forecast.advection) can only move whole views. This
study routes the generator's TRUE per-view cloud fractions the same way, with no embedding and no read-out in
between: points over the target view's field of view are traced upwind to the scans t, t − 5, t − 10 min;
each takes the whole-view true cloud fraction of the view (sky or horizon row) it lands in at the most recent
scan that saw it; points no view saw take a fill value. It prints cloud-fraction MAE against the true cloud
fraction at t + h on the slots the evaluation scored (the sky-row persistence rows of its forecasts.parquet at
--horizon), for:

- the pixel-level oracle (`oracle_view_horizon_cf_<h>`) and persistence (the view's own fraction at t);
- the ring mean: the mean of the 16 views' fractions at t, a linear function of what every network sees;
- routed views, per layer with the true winds and heights (the best any view-level router could do);
- routed views with the published motion estimate and one height (what the advection path has), unseen points
  filled with the ring mean.

Geometry as data.sky and the advection path: views 36° tall × 48° wide, columns 45° apart, a point belongs to
the view whose centre is nearest (in half-widths) among those whose box holds it. Obstruction by the site's
trees is ignored (the sky row clears them), so the routed rows are, if anything, optimistic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data.formats import row_presets
from data.sky import THERMAL_VFOV_DEG, preset_azimuth_deg, preset_elevation_deg
from data.synthetic.oracle import MOTION_SCALE_SD
from sagecast_common.cli import UserError, run_cli

HALF_V, HALF_H = THERMAL_VFOV_DEG / 2, THERMAL_VFOV_DEG * 4 / 3 / 2
LAGS_MIN = (0.0, 5.0, 10.0)  # the scans the oracle knows
PRESETS = row_presets(("sky", "horizon"))  # the 16 views, sky row first
VIEW_EL = np.array([preset_elevation_deg(p) for p in PRESETS])
VIEW_AZ = np.array([preset_azimuth_deg(p) for p in PRESETS])
HEIGHT_M = 1000.0  # one cloud-base height for the published motion: about what the advection path learns


def _points(n_el: int = 12, n_az: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(Q,) elevation and azimuth offsets of points spread over a view's field of view."""
    e = ((np.arange(n_el) + 0.5) / n_el * 2 - 1) * HALF_V
    a = ((np.arange(n_az) + 0.5) / n_az * 2 - 1) * HALF_H
    e, a = np.meshgrid(e, a, indexing="ij")
    return e.ravel(), a.ravel()


def route(values: np.ndarray, target_az: np.ndarray, wind: np.ndarray, height_m: np.ndarray, fill: np.ndarray,
          *, horizon_min: float, lags_min=LAGS_MIN) -> np.ndarray:
    """(N,) forecasts of sky-row views facing `target_az` (N,) degrees at t + horizon_min.

    values (N, K, V): each view's value at the scans t − lags_min[k] (NaN: no such scan or view; V = 8 sky views,
    or 16 with the horizon row), wind (N, 2) m/s toward east and north, height_m (N,) the height that turns it
    into a displacement per metre, fill (N,) the value of points no scan saw."""
    N, K, V = values.shape
    pe, pa = _points()
    el = np.radians(VIEW_EL[0] + pe)[None]  # (1, Q): the target is a sky-row view
    az = np.radians(target_az[:, None] + pa[None])  # (N, Q)
    x, y = np.sin(az) / np.tan(el), np.cos(az) / np.tan(el)  # ground offset per metre of height
    out = np.full(x.shape, np.nan)
    for k, lag in enumerate(lags_min):
        back = ((horizon_min + lag) * 60.0 / height_m)[:, None]
        qx, qy = x - wind[:, :1] * back, y - wind[:, 1:] * back
        d_el = (np.degrees(np.arctan2(1.0, np.hypot(qx, qy)))[..., None] - VIEW_EL[:V]) / HALF_V
        d_az = ((np.degrees(np.arctan2(qx, qy))[..., None] - VIEW_AZ[:V] + 180.0) % 360.0 - 180.0) / HALF_H
        dist = np.where((np.abs(d_el) <= 1) & (np.abs(d_az) <= 1), d_el ** 2 + d_az ** 2, np.inf)  # (N, Q, V)
        found = np.take_along_axis(values[:, k], dist.argmin(-1), axis=1)  # (N, Q)
        take = np.isnan(out) & np.isfinite(dist.min(-1)) & np.isfinite(found)
        out[take] = found[take]
    return np.where(np.isnan(out), fill[:, None], out).mean(axis=1)


def _ns(times: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch, whatever unit the column is stored in."""
    return pd.to_datetime(times, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


def slots(truth: pd.DataFrame, forecasts: pd.DataFrame, horizon_min: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The scored sky-row slots at this horizon: (anchor captures' truth rows, true cloud fraction at t + h)."""
    f = forecasts[(forecasts.method == "persistence") & (forecasts.horizon_min == horizon_min)]
    if f.empty:
        raise UserError(f"no persistence rows at {horizon_min:g} min in the forecasts table: is it an evaluation's "
                        "forecasts.parquet?")
    t = truth.assign(ts=_ns(truth.timestamp)).sort_values("ts")

    def nearest(column: str) -> pd.DataFrame:  # a loop's captures are seconds apart; the table has the scan's time
        q = pd.DataFrame({"ts": _ns(f[column]), "position": f.preset.to_numpy().astype("int64"),
                          "i": np.arange(len(f))}).sort_values("ts")
        m = pd.merge_asof(q, t, on="ts", by="position", tolerance=60 * 10**9, direction="nearest")
        return m.sort_values("i").reset_index(drop=True)

    anchor, target = nearest("anchor_time"), nearest("target_time")
    ok = anchor.loop_num.notna().to_numpy() & target.cloud_fraction.notna().to_numpy()
    if not ok.any():
        raise UserError("no scored slot matches the truth table: is --raw the sky the evaluation scored?")
    return anchor[ok].reset_index(drop=True), target.cloud_fraction.to_numpy()[ok]


def scans(truth: pd.DataFrame, anchor: pd.DataFrame, column: str) -> np.ndarray:
    """(N, K, 16) the per-view `column` at the scan loops LAGS_MIN before each anchor's (NaN where none)."""
    views = truth.pivot_table(index="loop_num", columns="position", values=column).reindex(columns=list(PRESETS))
    start = truth.groupby("loop_num").timestamp.min().reindex(views.index)
    start = _ns(start.reset_index(drop=True))
    row = pd.Series(np.arange(len(views)), index=views.index)
    own = row.reindex(anchor.loop_num.astype(int)).to_numpy()
    table = np.vstack([views.to_numpy(), np.full((1, len(PRESETS)), np.nan)])  # last row: no scan
    out = np.empty((len(anchor), len(LAGS_MIN), len(PRESETS)))
    for k, lag in enumerate(LAGS_MIN):
        back = row.reindex(anchor.loop_num.astype(int) - k).to_numpy()  # loops are numbered in order
        ok = ~np.isnan(back)
        back = np.where(ok, back, 0).astype(int)
        ok &= np.abs((start[own] - start[back]) / 1e9 - lag * 60.0) < 60.0
        out[:, k] = table[np.where(ok, back, -1)]
    return out


def ceilings(truth: pd.DataFrame, forecasts: pd.DataFrame, *, horizon_min: float = 5.0) -> dict[str, float]:
    anchor, true = slots(truth, forecasts, horizon_min)
    az = np.array([preset_azimuth_deg(int(p)) for p in anchor.position])
    cf = scans(truth, anchor, "cloud_fraction")
    ring = np.nanmean(cf[:, 0], axis=1)
    low_w, high_w = anchor[["wind_u", "wind_v"]].to_numpy(), anchor[["high_wind_u", "high_wind_v"]].to_numpy()
    per_layer = [route(scans(truth, anchor, f"cloud_fraction_{layer}"), az, w, anchor[f"{layer}_base_m"].to_numpy(),
                       anchor[f"{layer}_cover"].to_numpy(), horizon_min=horizon_min)
                 for layer, w in (("low", low_w), ("high", high_w))]
    motion = anchor[["motion_u", "motion_v"]].to_numpy()
    motion = np.where(np.isfinite(motion).all(axis=1, keepdims=True), motion, 0.0)  # no motion: nothing moves
    one_height = np.full(len(anchor), HEIGHT_M)
    rows = {
        "oracle (pixel level, sky + horizon rows)": anchor[f"oracle_view_horizon_cf_{horizon_min:g}"].to_numpy(),
        "persistence (the view at t)": anchor.cloud_fraction.to_numpy(),
        "ring mean (16 views at t)": ring,
        "routed views, per layer, true winds and heights": 1 - (1 - per_layer[0]) * (1 - per_layer[1]),
        f"routed views, published motion, {HEIGHT_M:.0f} m, unseen: ring mean":
            route(cf, az, motion, one_height, ring, horizon_min=horizon_min),
        f"routed views, published motion, {HEIGHT_M:.0f} m, sky row only":
            route(cf[:, :, :8], az, motion, one_height, ring, horizon_min=horizon_min),
    }
    out = {"slots": float(len(true))}
    for name, p in rows.items():
        ok = np.isfinite(p)
        out[name] = float(np.abs(p[ok] - true[ok]).mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stage2_forecast.ceilings", description=__doc__.split("\n\n")[0],
                                 epilog="The motion's noise model: data.synthetic.oracle (height scale sd "
                                        f"{MOTION_SCALE_SD:g}).")
    ap.add_argument("--raw", required=True, help="the synthetic sky's raw folder (VSN/truth.parquet)")
    ap.add_argument("--forecasts", required=True, help="an evaluation's forecasts.parquet (its scored slots)")
    ap.add_argument("--horizon", type=float, default=5.0, help="minutes ahead (default 5)")
    args = ap.parse_args(argv)
    found = sorted(Path(args.raw).glob("*/truth.parquet"))
    if len(found) != 1:
        raise UserError(f"--raw {args.raw}: expected one node's truth.parquet (VSN/truth.parquet), found {len(found)}")
    out = ceilings(pd.read_parquet(found[0]), pd.read_parquet(args.forecasts), horizon_min=args.horizon)
    print(f"cloud-fraction MAE at {args.horizon:g} min on {int(out.pop('slots')):,} scored sky-row slots")
    for name, mae in out.items():
        print(f"  {mae:.4f}  {name}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="python -m stage2_forecast.ceilings")
