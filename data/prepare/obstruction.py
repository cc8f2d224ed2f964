"""Static obstructions (trees, roofs) estimated from the data, left out of the prepared `cloud_fraction`.

Used by `python -m data.prepare`. A tree or roof in the bottom of a frame is as warm as the air, so the
thermal clear-sky rule (data.sky.cloud_mask) calls it cloud in every capture. Per (node, preset), a pixel is
static when the rule flags it in ≥ STATIC_SHARE of that preset's daytime captures, given ≥ MIN_CAPTURES of
them; only pixels joined to the bottom of the frame through static pixels in their column count (objects
stand on the ground), and a mask over more than MAX_SHARE of the frame is dropped (that is a persistent deck
of cloud, not an obstruction). The capture's `cloud_fraction` is then the cloud share of the other pixels.

Limits: a few days of persistent low cloud can still pass for an obstruction at the bottom of a frame; an
object that the rule does not flag (a cold roof at night is not counted: only daytime captures vote) or that
moves stays in the fraction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.prepare.images import load_cached

MIN_CAPTURES = 20
STATIC_SHARE = 0.95
MAX_SHARE = 0.5


def _cloud(path) -> np.ndarray:
    entry = load_cached(path, "cloud", "cloud_shape")
    shape = tuple(int(n) for n in entry["cloud_shape"])
    return np.unpackbits(entry["cloud"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def static_mask(flag_share: np.ndarray, captures: int) -> np.ndarray | None:
    """Bool (H, W) of obstructed pixels, from the share of `captures` daytime captures of one preset in which
    the cloud rule flagged each pixel; None when there is no (believable) obstruction."""
    if captures < MIN_CAPTURES:
        return None
    flagged = flag_share >= STATIC_SHARE
    grounded = np.flipud(np.cumprod(np.flipud(flagged), axis=0)).astype(bool)  # unbroken run up from the bottom
    if not grounded.any() or grounded.mean() > MAX_SHARE:
        return None
    return grounded


def exclude_obstructions(index: pd.DataFrame) -> tuple[pd.Series, dict[str, float]]:
    """(cloud_fraction per row without each preset's static pixels, {"VSN/position": share of the frame
    masked}). `index` needs vsn, position, is_day, cloud_fraction and `_cache` (the pair's cache entry)."""
    fraction = index["cloud_fraction"].copy()
    masked = {}
    for (vsn, position), group in index.groupby(["vsn", "position"], sort=True):
        day = group[group["is_day"]]
        if len(day) < MIN_CAPTURES:
            continue
        total, shapes = None, set()
        for path in day["_cache"]:
            cloud = _cloud(path)
            shapes.add(cloud.shape)
            if len(shapes) > 1:  # the sensor changed: no single mask fits
                break
            total = cloud.astype(np.int64) if total is None else total + cloud
        static = static_mask(total / len(day), len(day)) if len(shapes) == 1 else None
        if static is None:
            continue
        masked[f"{vsn}/{position}"] = round(float(static.mean()), 4)
        for i, path in zip(group.index, group["_cache"], strict=True):
            cloud = _cloud(path)
            if cloud.shape == static.shape:
                fraction[i] = float(cloud[~static].mean())
    return fraction, masked
