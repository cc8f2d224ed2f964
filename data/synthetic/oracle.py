"""Per-capture truth of the synthetic sky and two forecast ceilings, as written to `<VSN>/truth.parquet`.

Columns (one row per capture; the first eleven as before this module existed):
- `vsn, timestamp, ts_ns, position, loop_num`: the capture;
- `cloud_fraction`: true cloud fraction seen by that preset (either layer opaque ≥ 0.5 on the TRUTH grid
  over the thermal field of view); `wind_u, wind_v`: low-layer wind (m/s toward east, north);
  `sun_elevation, sun_azimuth, is_day`;
- `regime`: the local day's regime (`clear`, `cumulus`, `stratocumulus`, `cirrus`, `overcast`, or
  `cumulus+cirrus` / `stratocumulus+cirrus` with a second layer);
- `cloud_fraction_low, cloud_fraction_high`: per layer (thermal sees the low one; thin cirrus hardly);
- `low_base_m, high_base_m, low_cover, high_cover, high_wind_u, high_wind_v`: the layers at that time
  (a layer's cover is its regional mean; `high_cover` 0 = no cirrus);
- `regional_cover`: 1 − (1 − low_cover)(1 − high_cover), the expected total cloud fraction;
- `oracle_advect_cf_{h}` for h in HORIZONS_MIN: this preset's cloud fraction at t + h as an advection oracle
  predicts it: both layers frozen as they are at t (shape and cover), moved by their true wind at t for h
  minutes, nominal pointing; equal to the truth when evolution is off, the wind constant and jitter 0;
- `oracle_cover_cf_{h}`: the true regional cover at t + h (knows tomorrow's climate, not where clouds are);
- `motion_u, motion_v`: the cloud-motion estimate a motion-vector plugin on the node would publish for the scan
  loop (m/s toward east, north; the same for every capture of the loop): the true low-layer wind at the loop's
  start times (1 + ε_h) plus ε per component, ε_h ~ N(0, MOTION_SCALE_SD), ε ~ N(0, MOTION_NOISE_MS), a fresh
  draw per loop from its own stream (so it never changes the sky). NaN when the low layer's cover is below
  TRACKABLE_COVER: nothing to track. The noise model is ours, not a plugin's validation: a camera measures
  angular motion, so an error in the assumed cloud-base height (~10 %) scales the whole vector, and tracking
  a few pixels between frames adds ~1 m/s.
Persistence, the baseline both are scored against (data.synthetic.stats), is `cloud_fraction` at t.
"""

from __future__ import annotations

import math

import numpy as np

from data.synthetic.render import PresetView, Sky, true_cloud

HORIZONS_MIN = (5, 15, 30, 60)
MOTION_SCALE_SD, MOTION_NOISE_MS = 0.10, 1.0
TRACKABLE_COVER = 0.01
MOTION_STREAM = 100  # random stream of the motion estimate: apart from the loop's (0) and the presets' (1–32)
TRUTH_COLUMNS = (["vsn", "ts_ns", "position", "loop_num", "cloud_fraction", "wind_u", "wind_v", "sun_elevation",
                  "sun_azimuth", "is_day", "regime", "cloud_fraction_low", "cloud_fraction_high", "low_base_m",
                  "high_base_m", "low_cover", "high_cover", "high_wind_u", "high_wind_v", "regional_cover"]
                 + ["motion_u", "motion_v"]
                 + [f"oracle_advect_cf_{h}" for h in HORIZONS_MIN] + [f"oracle_cover_cf_{h}" for h in HORIZONS_MIN])


def regional_cover(sky: Sky, t_s: float) -> float:
    low, high = sky.weather.layer("low", t_s).cover, sky.weather.layer("high", t_s).cover
    return 1 - (1 - low) * (1 - high)


def capture_truth(sky: Sky, view: PresetView, t_s: float, *, jitter=(0.0, 0.0)) -> dict:
    """Truth and oracle values of one capture (the columns after `is_day`, plus cloud_fraction and wind)."""
    w = sky.weather
    low, high = w.layer("low", t_s), w.layer("high", t_s)
    cf = true_cloud(sky, view.truth, t_s, jitter=jitter)
    row = {"cloud_fraction": cf["total"], "wind_u": low.wind[0], "wind_v": low.wind[1],
           "regime": w.day(t_s).regime, "cloud_fraction_low": cf["low"], "cloud_fraction_high": cf["high"],
           "low_base_m": low.base_m, "high_base_m": high.base_m, "low_cover": low.cover, "high_cover": high.cover,
           "high_wind_u": high.wind[0], "high_wind_v": high.wind[1], "regional_cover": regional_cover(sky, t_s)}
    for h in HORIZONS_MIN:
        row[f"oracle_advect_cf_{h}"] = true_cloud(sky, view.truth, t_s, lead_s=h * 60.0)["total"]
    for h in HORIZONS_MIN:
        row[f"oracle_cover_cf_{h}"] = regional_cover(sky, t_s + h * 60.0)
    return row


def cloud_motion(sky: Sky, t_s: float, loop_s: int) -> dict:
    """`motion_u`, `motion_v` of the scan loop at time t_s (nominal start loop_s, s since the epoch; see above)."""
    low = sky.weather.layer("low", t_s)
    rng = np.random.default_rng([sky.seed, sky.key, loop_s, MOTION_STREAM])
    scale, (eu, ev) = 1 + rng.normal(0.0, MOTION_SCALE_SD), rng.normal(0.0, MOTION_NOISE_MS, 2)
    if low.cover < TRACKABLE_COVER:
        return {"motion_u": math.nan, "motion_v": math.nan}
    return {"motion_u": scale * low.wind[0] + eu, "motion_v": scale * low.wind[1] + ev}
