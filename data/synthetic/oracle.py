"""Per-capture truth of the synthetic sky and the forecast ceilings, as written to `<VSN>/truth.parquet`.

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
- `oracle_view_cf_{h}`: the advection oracle limited to what the sky-row views (presets 1, 5, …, 29) saw at
  t, t − 5 and t − 10 min (VIEW_LAGS_MIN). Per truth pixel of the target at t + h and per layer: trace the
  piece of frozen field back along the layer's wind at t to where it was at t − k (its own height and wind
  per layer); if that point lay inside a chosen view's thermal field of view (an elevation × azimuth box,
  `data.sky.THERMAL_VFOV_DEG` tall, 4/3 as wide, as render.preset_view lays out pixels) and was not
  obstructed (data.synthetic.site) for some k, the pixel takes the true frozen mask, else the layer's
  regional cover (a probability); the forecast is the mean over pixels of 1 − (1 − p_low)(1 − p_high). It
  equals the advection oracle where every pixel was seen and the regional-cover expectation where none was.
  The oracle assumes those three scans exist (also before a run's first loop): it is geometry, not a camera;
- `oracle_view_horizon_cf_{h}`: the same knowing the sky and horizon rows (presets 2, 6, …, 30 as well);
- `seen_share_{h}`, `seen_share_horizon_{h}`: the share of the target's truth pixels whose low-layer piece
  those views saw (low layer: the one thermal sees and the regimes are about; cirrus, 5× higher, is seen more).
The oracles and shares count the target's truth pixels that reach the sky (`Rays.open`; all when None).
Visibility uses the weather at the scan loop's start (LoopSight, shared by every preset of the loop);
the cloud masks use each capture's own time. These columns are computed for every capture, whatever rows
the run renders. Persistence, the baseline all are scored against (data.synthetic.stats), is
`cloud_fraction` at t.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from data.formats import THERMAL_H, THERMAL_W, row_presets
from data.sky import THERMAL_VFOV_DEG, preset_elevation_deg
from data.synthetic.field import threshold
from data.synthetic.render import LAYERS, PresetView, Sky, true_cloud
from data.synthetic.site import obstructed, skyline_deg

HORIZONS_MIN = (5, 15, 30, 60)
MOTION_SCALE_SD, MOTION_NOISE_MS = 0.10, 1.0
TRACKABLE_COVER = 0.01
MOTION_STREAM = 100  # random stream of the motion estimate: apart from the loop's (0) and the presets' (1–32)
VIEW_LAGS_MIN = (0, 5, 10)  # the scans a view-limited oracle knows: t, t − 5 and t − 10 min
VIEW_SETS = {"view": ("sky",), "view_horizon": ("sky", "horizon")}  # oracle name: rows of the views it knows
SEEN_SHARE = {"view": "seen_share", "view_horizon": "seen_share_horizon"}
TRUTH_COLUMNS = (["vsn", "ts_ns", "position", "loop_num", "cloud_fraction", "wind_u", "wind_v", "sun_elevation",
                  "sun_azimuth", "is_day", "regime", "cloud_fraction_low", "cloud_fraction_high", "low_base_m",
                  "high_base_m", "low_cover", "high_cover", "high_wind_u", "high_wind_v", "regional_cover"]
                 + ["motion_u", "motion_v"]
                 + [f"oracle_advect_cf_{h}" for h in HORIZONS_MIN] + [f"oracle_cover_cf_{h}" for h in HORIZONS_MIN])
VIEW_COLUMNS = ([f"oracle_{name}_cf_{h}" for name in VIEW_SETS for h in HORIZONS_MIN]
                + [f"{SEEN_SHARE[name]}_{h}" for name in VIEW_SETS for h in HORIZONS_MIN])
TRUTH_COLUMNS += VIEW_COLUMNS
HALF_VFOV_DEG = THERMAL_VFOV_DEG / 2
HALF_HFOV_DEG = THERMAL_VFOV_DEG * THERMAL_W / THERMAL_H / 2


def regional_cover(sky: Sky, t_s: float) -> float:
    low, high = sky.weather.layer("low", t_s).cover, sky.weather.layer("high", t_s).cover
    return 1 - (1 - low) * (1 - high)


def direction_deg(qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elevation, azimuth) in degrees of the point at ground offset (qx east, qy north) per metre of height."""
    return np.degrees(np.arctan2(1.0, np.hypot(qx, qy))), np.degrees(np.arctan2(qx, qy)) % 360.0


@lru_cache(maxsize=64)
def _highest_skyline_deg(key: int) -> float:
    return float(skyline_deg(key, np.arange(360.0)).max())  # the skyline is linear between whole degrees


def sees(key: int, qx: np.ndarray, qy: np.ndarray, rows) -> np.ndarray:
    """Whether a view of the named preset rows sees the point at ground offset (qx, qy) per metre of its height:
    its direction lies in some view's field of view and no tree or roof of site `key` is in the way.

    A row's 8 boxes (48° wide, 45° apart) overlap all the way round, so a row sees its whole elevation band;
    the band is compared on the squared offset (cot² of the elevation), and directions are computed only for
    points below the site's highest skyline."""
    r2 = qx * qx + qy * qy
    seen = np.zeros(r2.shape, bool)
    elevations = sorted({preset_elevation_deg(p) for p in row_presets(rows)})
    for elevation in elevations:
        top, bottom = np.radians(elevation + HALF_VFOV_DEG), np.radians(elevation - HALF_VFOV_DEG)
        seen |= (r2 >= 1 / np.tan(top) ** 2) & (r2 <= 1 / np.tan(bottom) ** 2)
    highest = _highest_skyline_deg(key)
    if elevations[0] - HALF_VFOV_DEG >= highest:  # e.g. the sky row: every view clears the trees
        return seen
    low = seen & (r2 > 1 / np.tan(np.radians(highest)) ** 2)
    if low.any():
        seen[low] = ~obstructed(key, *direction_deg(qx[low].astype(np.float64), qy[low].astype(np.float64)))
    return seen


class LoopSight:
    """Which target pixels each view-limited oracle knows, for the presets of one scan loop (module doc).

    `seen[pos][name]`: (layer, horizon, TRUTH_H, TRUTH_W) bool for name in VIEW_SETS. Computed at once for all
    the loop's presets: one vectorised pass over (layer, horizon, lag, preset, pixel). A layer that draws no
    cloud at t is skipped (left unseen: its mask and its cover are both 0, so seeing it changes nothing)."""

    def __init__(self, sky: Sky, key: int, t_s: float, views: dict[int, PresetView]):
        ex = np.stack([v.truth.ex for v in views.values()])  # (P, TRUTH_H, TRUTH_W): ground offset / height
        ny = np.stack([v.truth.ny for v in views.values()])
        travel_s = np.add.outer(HORIZONS_MIN, VIEW_LAGS_MIN) * 60.0  # (H, K): from t − k to t + h
        seen = {name: np.zeros((len(LAYERS), len(HORIZONS_MIN), *ex.shape), bool) for name in VIEW_SETS}
        for i, layer in enumerate(LAYERS):
            lay = sky.weather.layer(layer, t_s)
            if i > 0 and threshold(lay.cover) == np.inf:  # seen_share is the low layer's: always traced
                continue
            back = (travel_s / lay.base_m)[..., None, None, None].astype(np.float32)  # upwind by wind · travel
            qx, qy = ex - np.float32(lay.wind[0]) * back, ny - np.float32(lay.wind[1]) * back  # (H, K, P, h, w)
            by_row = {row: sees(key, qx, qy, (row,)).any(axis=1)
                      for row in dict.fromkeys(sum(VIEW_SETS.values(), ()))}
            for name, rows in VIEW_SETS.items():
                seen[name][i] = np.logical_or.reduce([by_row[r] for r in rows])
        self.seen = {pos: {name: s[:, :, i] for name, s in seen.items()} for i, pos in enumerate(views)}


def _frozen_masks(sky: Sky, rays, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(layer, horizon, h, w) cloud masks of both layers frozen at t and moved by their wind for each horizon,
    and (layer,) their covers at t (0 for a layer that draws nothing: its mask is empty)."""
    masks = np.zeros((len(LAYERS), len(HORIZONS_MIN), *rays.ex.shape), bool)
    covers = np.zeros(len(LAYERS))
    for i, layer in enumerate(LAYERS):
        for j, h in enumerate(HORIZONS_MIN):
            ft = sky.field(layer, rays.ex, rays.ny, t_s, lead_s=h * 60.0)
            if ft is None:  # no cloud at t: none at any horizon either (the field is frozen at t)
                break
            masks[i, j] = ft[0] >= ft[1]
        else:
            covers[i] = sky.weather.layer(layer, t_s).cover
    return masks, covers


def capture_truth(sky: Sky, view: PresetView, t_s: float, *, seen: dict[str, np.ndarray],
                  jitter=(0.0, 0.0)) -> dict:
    """Truth and oracle values of one capture (the columns after `is_day`, plus cloud_fraction and wind);
    `seen`: this preset's LoopSight.seen entry."""
    w = sky.weather
    low, high = w.layer("low", t_s), w.layer("high", t_s)
    cf = true_cloud(sky, view.truth, t_s, jitter=jitter)
    row = {"cloud_fraction": cf["total"], "wind_u": low.wind[0], "wind_v": low.wind[1],
           "regime": w.day(t_s).regime, "cloud_fraction_low": cf["low"], "cloud_fraction_high": cf["high"],
           "low_base_m": low.base_m, "high_base_m": high.base_m, "low_cover": low.cover, "high_cover": high.cover,
           "high_wind_u": high.wind[0], "high_wind_v": high.wind[1], "regional_cover": regional_cover(sky, t_s)}
    def sky_pixels(a: np.ndarray) -> np.ndarray:  # (…, h, w) → (…, pixel): those no tree or roof hides
        return a.reshape(*a.shape[:-2], -1) if view.truth.open is None else a[..., view.truth.open]

    masks, covers = _frozen_masks(sky, view.truth, t_s)
    masks = sky_pixels(masks)  # (layer, horizon, pixel)
    advect = (masks[0] | masks[1]).mean(axis=-1)
    view_cf, share = {}, {}
    for name, known in seen.items():  # known pixels take the frozen mask, the others their layer's cover
        known = sky_pixels(known)
        p = np.where(known, masks, covers[:, None, None])
        view_cf[name] = 1.0 - ((1.0 - p[0]) * (1.0 - p[1])).mean(axis=-1)
        share[name] = known[0].mean(axis=-1)
    for j, h in enumerate(HORIZONS_MIN):
        row[f"oracle_advect_cf_{h}"] = float(advect[j])
        for name in seen:
            row[f"oracle_{name}_cf_{h}"] = float(view_cf[name][j])
            row[f"{SEEN_SHARE[name]}_{h}"] = float(share[name][j])
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
