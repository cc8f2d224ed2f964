"""Turn one RGB/thermal pair into S×S arrays (used by `python -m data.prepare`), with a per-pair cache.

RGB: the combined JPG's left (optical) half, cropped to `crop` and resized to S×S. libjpeg decodes at 1/2,
1/4 or 1/8 scale (Pillow `Image.draft`), the smallest scale that still leaves ≥ S pixels across the crop,
so a 6144×2048 frame is never fully decoded for a small target. Thermal: the full sensor frame resized to
S×S with the same (antialiased bilinear) filter and stored float16 °C. With the default crop 'fov' the RGB
crop is exactly the thermal field of view (data.formats.thermal_fov_box), so both squeeze the same 4:3 view
to a square and pixel (i, j) looks at the same sky in both. Summaries (t_min/mean/max, cloud_fraction by the
data.sky rule at the preset's own row elevations, `preset_elevation_deg`; presets below the horizon row, and
files without a position, use the sky row's) come from the full-resolution thermal frame, whose cloud mask is
cached too (bit-packed) for the static-obstruction mask (data.prepare.obstruction). A frame with any value
outside THERMAL_RANGE (or not finite) is refused as `bad_thermal`: one 1e308 cell would turn into inf in float16
and poison norm_stats.json. Any other per-file error (EIO, a vanished file, ...) is a skip with its reason, never
a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.formats import ThermalFormatError, read_thermal_csv, thermal_fov_box
from data.sky import centre_elevation, cloud_mask
from sagecast_common.runio import atomic_path

CACHE_VERSION = 3  # bump when the processing changes: old cache entries are then ignored
STATS = ("t_min", "t_mean", "t_max", "cloud_fraction")
# Physically possible sky/scene brightness temperatures, well inside float16 (max 65504): the camera's
# 14-bit grid spans -273.15..382 °C, but nothing outdoors on Earth reads below -100 °C or above 150 °C.
THERMAL_RANGE = (-100.0, 150.0)


class BadInput(Exception):
    """A file that cannot be used; `reason` is the short key counted in report.json."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def parse_crop(text: str) -> str | tuple[float, float, float, float]:
    """'fov' or 'left,top,right,bottom' (all ≤ 1: fractions of the optical half; else its pixels)."""
    if text.strip().lower() == "fov":
        return "fov"
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[0] >= box[2] or box[1] >= box[3] or min(box) < 0:
        raise ValueError(f"--crop must be 'fov' or 'left,top,right,bottom' with left<right, top<bottom; got {text!r}")
    return box


def crop_box(crop, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box inside the width×height optical half."""
    if crop == "fov":
        return thermal_fov_box(width, height)
    left, top, right, bottom = crop
    if max(crop) <= 1.0:
        left, right, top, bottom = left * width, right * width, top * height, bottom * height
    box = (round(left), round(top), min(round(right), width), min(round(bottom), height))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise BadInput("rgb_dims", f"crop {crop} is empty inside a {width}x{height} optical half")
    return box


def load_rgb(path: Path, size: int, crop) -> np.ndarray:
    """uint8 (S, S, 3) from a combined RGB|thermal-preview JPG."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                raise BadInput("corrupt_jpg", f"not a JPEG (Pillow reads {im.format})")
            width, height = im.size
            if width != 3 * height:
                raise BadInput("rgb_dims", f"{width}x{height} is not a 3:1 combined optical|thermal frame")
            left, top, right, bottom = crop_box(crop, width // 2, height)
            im.draft("RGB", (math.ceil(width * size / (right - left)), math.ceil(height * size / (bottom - top))))
            sx, sy = im.size[0] / width, im.size[1] / height
            im = im.convert("RGB")
            small = im.resize((size, size), Image.Resampling.BILINEAR,
                              box=(left * sx, top * sy, right * sx, bottom * sy))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadInput("corrupt_jpg", f"{type(e).__name__}: {e}") from None
    return np.asarray(small, np.uint8)


def load_thermal(path: Path, size: int, position: int | None = None
                 ) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
    """float16 (S, S) °C, the full-resolution summaries and cloud mask (bool (H, W))."""
    try:
        full = read_thermal_csv(path)
    except ThermalFormatError as e:
        raise BadInput("bad_thermal", str(e)) from None
    lo, hi = THERMAL_RANGE
    outside = ~((full >= lo) & (full <= hi))  # NaN compares false: caught here too
    if outside.any():
        r, c = np.unravel_index(np.argmax(outside), full.shape)
        raise BadInput("bad_thermal", f"{path}: {int(outside.sum())} values outside {lo:g}..{hi:g} °C, "
                                      f"first {float(full[r, c])!r} at row {r + 1}, column {c + 1}")
    if m := re.search(r"_(\d+)x(\d+)_", path.name):
        named = (int(m[2]), int(m[1]))
        if full.shape != named:
            raise BadInput("thermal_dims", f"{path}: {full.shape[1]}x{full.shape[0]} in the file, "
                                           f"{named[1]}x{named[0]} in the name")
    small = Image.fromarray(full).resize((size, size), Image.Resampling.BILINEAR)
    cloud = cloud_mask(full, centre_deg=centre_elevation(position))
    stats = {"t_min": float(full.min()), "t_mean": float(full.mean(dtype=np.float64)), "t_max": float(full.max()),
             "cloud_fraction": float(cloud.mean())}
    return np.asarray(small, np.float32).astype(np.float16), stats, cloud


def process_pair(job: dict) -> dict:
    """Worker: {'rgb', 'thermal', 'stats' (STATS order)} or {'fail': [file, reason, detail]}; never raises
    on a bad file. An OSError (reason 'unreadable') may pass, so its result also says 'transient'."""
    out = {}
    for which in ("rgb", "thermal"):
        path = Path(job[f"{which}_path"])
        try:
            if which == "rgb":
                out["rgb"] = load_rgb(path, job["size"], job["crop"])
            else:
                out["thermal"], stats, cloud = load_thermal(path, job["size"], job.get("position"))
        except BadInput as e:
            return {"fail": [job[f"{which}_rel"], e.reason, e.detail]}
        except OSError as e:
            return {"fail": [job[f"{which}_rel"], "unreadable", f"{type(e).__name__}: {e}"], "transient": True}
        except Exception as e:  # one file must not end the run; the reason is listed instead
            return {"fail": [job[f"{which}_rel"], "error", f"{type(e).__name__}: {e}"], "transient": True}
    return {**out, "stats": np.array([stats[k] for k in STATS]), "cloud": np.packbits(cloud),
            "cloud_shape": np.array(cloud.shape)}


def cache_key(job: dict) -> str:
    """Same files (name, size, mtime) and same settings → same key; anything else is reprocessed."""
    parts = [CACHE_VERSION, job["size"], job["crop"]]
    for which in ("rgb", "thermal"):
        st = Path(job[f"{which}_path"]).stat()
        parts += [job[f"{which}_rel"], st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npz"


def cache_usage(cache_dir: Path, keep: set[str] | None = None) -> dict:
    """Entries and bytes in the cache; with `keep` (entry file names), first delete every other entry and
    the temporary files a killed run left behind."""
    entries = size = pruned = freed = 0
    for path in cache_dir.glob("*/*"):  # cache_path's layout: two-character folders of entries
        nbytes = path.stat().st_size
        if keep is not None and path.name not in keep:
            path.unlink()
            pruned, freed = pruned + 1, freed + nbytes
        elif path.suffix == ".npz":
            entries, size = entries + 1, size + nbytes
    return {"cache_entries": entries, "cache_bytes": size, "pruned_entries": pruned, "pruned_bytes": freed}


def save_cached(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # atomic: a killed run leaves no partial entry
        np.savez(f, **result)


def load_cached(path: Path, *keys: str) -> dict | None:
    """The stored result (only `keys` of it, if given), or None if absent or unreadable."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in (keys or z.files) if k in z.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None
