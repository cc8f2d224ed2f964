"""Files → the frames the encoders saw in training, exactly as `data.prepare` (images.py) and `data.dataset`
(normalised_frames) make them; tests/test_edge_runtime.py checks that on the same files.

Reimplemented rather than imported: `data.prepare` pulls pandas, numba and pyarrow in at import, too much
for a node. RGB: the combined JPG's optical half, cropped (default the thermal field of view), decoded at
the smallest libjpeg scale that keeps ≥ S pixels (`draft`), resized bilinear to S×S, uint8. Thermal: the
celsius CSV (as `np.loadtxt` reads it, float32), values outside THERMAL_RANGE refused, resized bilinear to
S×S and stored float16, as the prepared arrays are. Then both are standardised with the train statistics.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadInput(Exception):
    """A file that cannot be used; `reason` is the short key published with the skip."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def thermal_fov_box(width: int, height: int, *, scale: float = 1.1) -> tuple[int, int, int, int]:
    """The thermal field of view inside the optical half (data.formats.thermal_fov_box)."""
    crop_h = round(height / scale)
    crop_w = min(width, round(height / scale * 4 / 3))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def crop_box(crop, width: int, height: int) -> tuple[int, int, int, int]:
    """'fov' or (left, top, right, bottom), fractions when all ≤ 1 (data.prepare.images.crop_box)."""
    if crop == "fov":
        return thermal_fov_box(width, height)
    left, top, right, bottom = crop
    if max(crop) <= 1.0:
        left, right, top, bottom = left * width, right * width, top * height, bottom * height
    box = (round(left), round(top), min(round(right), width), min(round(bottom), height))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise BadInput("rgb_dims", f"crop {crop} is empty inside a {width}x{height} optical half")
    return box


def parse_crop(text: str):
    return "fov" if text.strip().lower() == "fov" else tuple(float(v) for v in text.split(","))


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


def read_thermal_csv(path: Path) -> np.ndarray:
    """float32 (H, W) °C: `key;value` header lines with width and height, a blank line, H rows of W values."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput("unreadable", f"{type(e).__name__}: {e}") from None
    header, rest = {}, raw
    while rest:
        line, _, after = rest.partition(b"\n")
        text = line.decode("ascii", "replace").strip()
        key, sep, value = text.partition(";")
        if text and (not sep or _is_number(key)):
            break  # the first data row
        if text:
            header[key.strip().lower()] = value.strip()
        rest = after
    try:
        width, height = int(header["width"]), int(header["height"])
        values = np.loadtxt(io.BytesIO(rest), delimiter=";", dtype=np.float64, ndmin=2)
    except (KeyError, ValueError) as e:
        raise BadInput("bad_thermal", f"{path}: {type(e).__name__}: {e}") from None
    if values.shape != (height, width):
        raise BadInput("bad_thermal", f"{path}: {values.shape[1]}x{values.shape[0]} values, header says "
                                      f"{width}x{height} (truncated?)")
    return values.astype(np.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_thermal(path: Path, size: int, thermal_range: tuple[float, float]) -> np.ndarray:
    """float16 (S, S) °C, as in the prepared thermal.npy."""
    full = read_thermal_csv(path)
    lo, hi = thermal_range
    if not ((full >= lo) & (full <= hi)).all():
        raise BadInput("bad_thermal", f"{path}: values outside {lo:g}..{hi:g} °C")
    if m := re.search(r"_(\d+)x(\d+)_", Path(path).name):
        if full.shape != (int(m[2]), int(m[1])):
            raise BadInput("thermal_dims", f"{path}: {full.shape[1]}x{full.shape[0]} in the file, {m[1]}x{m[2]} "
                                           "in the name")
    small = Image.fromarray(full).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32).astype(np.float16)


def normalise(rgb: np.ndarray, thermal: np.ndarray, norm: dict) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) and float16 (N, S, S) → float32 (N, 3, S, S), (N, 1, S, S) standardised."""
    mean = np.asarray(norm["rgb_mean"], np.float32)[:, None, None]
    std = np.asarray(norm["rgb_std"], np.float32)[:, None, None]
    x = (rgb.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0) - mean) / std
    t = (thermal.astype(np.float32)[:, None] - np.float32(norm["thermal_mean"])) / np.float32(norm["thermal_std"])
    return x.astype(np.float32), t.astype(np.float32)
