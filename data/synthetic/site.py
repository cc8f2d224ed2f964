"""The obstructions around a synthetic node: a per-site skyline of trees and roofs, as elevation per azimuth.

A camera on a pole or roof sees nearby objects above its horizontal: an object H metres above the lens at d
metres subtends atan(H / d), e.g. a tree 10 m taller than the mount 30 m away reaches 18°, a roof ridge 4 m up
at 20 m reaches 11°. The horizon row (tilt 1, 14–50°, data.sky.TILT_ELEVATION_DEG) therefore shows such
objects in the bottom of some frames (SAGE_DATA.md §8); the sky row (32–68°) clears them.

`skyline_deg(key, azimuth)` is a pure function of the node key (data.synthetic.layout.node_key): a far
horizon of 0–3° plus 1–3 roofs (flat tops 6–14° over 20–70° of azimuth) and 2–8 trees (round crowns
10–26° high, 4–20° wide). A pixel is obstructed when its elevation is below the skyline at its azimuth.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _profile(key: int) -> np.ndarray:
    """Skyline elevation (deg) at each whole degree of azimuth 0..359."""
    rng = np.random.default_rng([key, 11])
    az = np.arange(360.0)
    sky = np.full(360, rng.uniform(0.0, 3.0))
    for _ in range(int(rng.integers(1, 4))):  # roofs: flat tops with short sloped ends
        centre, width, top = rng.uniform(0, 360), rng.uniform(20, 70), rng.uniform(6, 14)
        off = np.abs((az - centre + 180) % 360 - 180)
        sky = np.maximum(sky, top * np.clip((width / 2 + 3 - off) / 3, 0, 1))
    for _ in range(int(rng.integers(2, 9))):  # trees: round crowns
        centre, half, top = rng.uniform(0, 360), rng.uniform(2, 10), rng.uniform(10, 26)
        off = np.abs((az - centre + 180) % 360 - 180)
        sky = np.maximum(sky, top * np.sqrt(np.clip(1 - (off / half) ** 2, 0, 1)))
    return sky


def skyline_deg(key: int, azimuth_deg) -> np.ndarray:
    """Elevation (deg) of the top of whatever stands at `azimuth_deg` (clockwise from north), interpolated."""
    prof = _profile(key)
    a = np.asarray(azimuth_deg, np.float64) % 360.0
    i = np.floor(a).astype(np.int64)
    f = a - i
    return prof[i] * (1 - f) + prof[(i + 1) % 360] * f


def obstructed(key: int, elevation_deg, azimuth_deg) -> np.ndarray:
    """Boolean: the ray at (elevation, azimuth) hits a tree, roof or the ground before the sky."""
    return np.asarray(elevation_deg) < skyline_deg(key, azimuth_deg)
