"""SAGE Mobotix file names and the thermal celsius CSV format (see shared SAGE_DATA.md §2, §4).

One place knows the names, so the synthetic generator, the downloader and the preparation agree on them.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.prepare.thermal_parse import parse_grid

SKY_PRESETS = (1, 5, 9, 13, 17, 21, 25, 29)
# Preset p looks along azimuth column (p-1)//4 at tilt (p-1)%4 (SAGE_DATA.md §3). A row is one tilt, named.
ROW_TILTS = {"sky": 0, "horizon": 1}
HORIZON_PRESETS = tuple(p + 1 for p in SKY_PRESETS)
THERMAL_W, THERMAL_H = 336, 252
_F32_MAX = float(np.finfo(np.float32).max)
MAX_THERMAL_SIDE = 4096  # a header claiming more is refused before any allocation (real: 336x252, 640x480)
KELVIN_STEP = 0.04  # the camera's 14-bit radiometric grid: celsius = 0.04 * uint - 273.15

# Kinds of file an upload can be. Only "rgb" and "thermal" are used for training.
RGB, THERMAL = "rgb", "thermal"
SKIP_REASONS = {
    "thermal_plot": "thermal plot JPG (matplotlib figure, not an image)",
    "thermal_uint": "thermal uint CSV (raw counts; celsius CSV used instead)",
    "thermal_raw": "thermal .raw frame",
    "thermal_nc": "thermal NetCDF (.nc)",
    "unknown": "unrecognised file name",
}

_POS = r"_position(?P<pos>[A-Za-z0-9]+)"
_CUSTOM = r"_(?P<custom>\d{4}-\d{2}-\d{2}T\d{6}_Pt(?P<pt>\d+)-[^/]*?_Img(?P<img>\d+))"
_ORIG_PREFIX = re.compile(r"^(?:rgb_)?(?P<stamp>\d{8}-\d{6})_(?P<vsn>[A-Za-z0-9]+)_(?P<rest>.+)$")
_TS_PREFIX = re.compile(r"^(?P<ts>\d{16,20})-(?P<rest>.+)$")


@dataclass(frozen=True)
class MobotixName:
    """What a Mobotix upload file name says. `position` is an int for presets, a str for directions
    (e.g. 'NEG') and custom points ('Pt1'), None when the name carries no position."""

    kind: str  # "rgb", "thermal", or a key of SKIP_REASONS
    position: int | str | None
    mode: str  # "preset", "direction", "custom", "none"
    image_index: int | None = None  # custom mode's _Img{k}

    @property
    def skip_reason(self) -> str | None:
        return SKIP_REASONS.get(self.kind)


def _classify(name: str) -> str:
    low = name.lower()
    if "thermal.celsius_plot" in low or "celsius_plot" in low:
        return "thermal_plot"
    if ".thermal.celsius" in low and low.endswith(".csv"):
        return THERMAL
    if ".thermal.uint" in low:
        return "thermal_uint"
    if low.endswith(".raw"):
        return "thermal_raw"
    if low.endswith(".nc"):
        return "thermal_nc"
    if low.endswith((".jpg", ".jpeg")) and "thermal" not in low:
        return RGB
    return "unknown"


def parse_mobotix_name(filename: str) -> MobotixName:
    """Parse a plugin file name (`meta.filename`, without any `{ts_ns}-` prefix)."""
    kind = _classify(filename)
    if m := re.search(_CUSTOM, filename):
        return MobotixName(kind, f"Pt{m['pt']}", "custom", int(m["img"]))
    if m := re.search(_POS + r"\.[A-Za-z]+$", filename):
        pos = m["pos"]
        if pos.isdigit():
            return MobotixName(kind, int(pos), "preset")
        return MobotixName(kind, pos, "direction")
    return MobotixName(kind, None, "none")


def split_ts_name(stored_name: str) -> tuple[int, str] | None:
    """`{ts_ns}-{filename}` (downloader / synthetic layout) → (ts_ns, filename); None if not that form."""
    m = _TS_PREFIX.match(stored_name)
    return (int(m["ts"]), m["rest"]) if m else None


def split_original_name(stored_name: str) -> tuple[str, str, str] | None:
    """Original workflow names (`rgb_20230521-095736_W057_6144x2048_position10.jpg`,
    `20230521-095736_W057_right_..._position10.csv`) → (stamp 'YYYYmmdd-HHMMSS' UTC, VSN, filename)."""
    m = _ORIG_PREFIX.match(stored_name)
    return (m["stamp"], m["vsn"].upper(), m["rest"]) if m else None


def rgb_name(width: int, height: int, position: int) -> str:
    return f"{width}x{height}_position{position}.jpg"


def thermal_name(position: int, *, width: int = THERMAL_W, height: int = THERMAL_H) -> str:
    return f"right_{width}x{height}_14bit.thermal.celsius_position{position}.csv"


def thermal_plot_name(position: int, *, width: int = THERMAL_W, height: int = THERMAL_H) -> str:
    return f"right_{width}x{height}_14bit.thermal.celsius_plot_position{position}.jpg"


def thermal_fov_box(width: int, height: int, *, scale: float = 1.1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the thermal sensor's field of view inside the optical half.

    Default = the original workflow's rule: a centred (H/scale) x (H/scale * 4/3) box, scale 1.1. The
    optical half is 3:2 and wider than the 4:3 thermal view. The synthetic sky renders its thermal image
    over exactly this box, so preparation with the default crop aligns the two modalities pixel for pixel.
    """
    crop_h = round(height / scale)
    crop_w = min(width, round(height / scale * 4 / 3))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def preset_column(position: int) -> int:
    """Azimuth column 0..7 of a numbered preset."""
    return (position - 1) // 4


def preset_tilt(position: int) -> int:
    """Tilt 0..3 of a numbered preset: 0 sky, 1 horizon, 2 below horizon, 3 ground."""
    return (position - 1) % 4


def preset_row(position: int) -> str | None:
    """Row name ("sky", "horizon") of a preset, None for the two rows below the horizon."""
    return {t: name for name, t in ROW_TILTS.items()}.get(preset_tilt(position))


def parse_rows(text: str) -> tuple[str, ...]:
    """`--rows sky,horizon` -> ("sky", "horizon") in scan order; ValueError naming the known rows otherwise."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in ROW_TILTS]
    if not names or unknown:
        raise ValueError(f"rows must be a comma list of {', '.join(ROW_TILTS)}, got {text!r}")
    return tuple(sorted(set(names), key=list(ROW_TILTS).index))


def row_presets(rows=("sky",)) -> tuple[int, ...]:
    """Presets of the named rows in scan order: each row's 8 columns, the sky row first."""
    return tuple(c * 4 + 1 + ROW_TILTS[r] for r in rows for c in range(8))


def download_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """Whether a downloaded file can be what its name says, without trusting the server's headers:
    ('truncated', why) when it looks cut short, ('wrong', why) when it is something else (an HTML error
    page...), None when plausible. RGB: JPEG start (FF D8 FF) and end (FF D9) markers; thermal CSV: a
    header with width/height and that many data rows. Other kinds are not checked."""
    path = Path(path)
    kind = _classify(path.name)
    if kind == RGB:
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
        if head != b"\xff\xd8\xff":
            return "wrong", f"not a JPEG (starts with {head!r})"
        if not tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
            return "truncated", "no JPEG end marker (cut short?)"
    elif kind == THERMAL:
        raw = path.read_bytes()
        try:
            _, height, _, start = _thermal_header(path, raw)
        except ThermalFormatError as e:
            return "wrong", f"not a thermal CSV ({str(e).removeprefix(f'{path}: ')})"
        body = raw[start:].rstrip()
        rows = body.count(b"\n") + 1 if body else 0
        if rows < height:
            return "truncated", f"{rows} of {height} data rows (cut short?)"
    return None


# --- thermal celsius CSV -------------------------------------------------------------------------------


class ThermalFormatError(ValueError):
    pass


def quantize_celsius(celsius: np.ndarray) -> np.ndarray:
    """Snap temperatures to the camera's 0.04 K grid, as the 14-bit radiometric values are."""
    counts = np.clip(np.rint((np.asarray(celsius, np.float64) + 273.15) / KELVIN_STEP), 0, 2**14 - 1)
    return counts * KELVIN_STEP - 273.15


def format_thermal_csv(celsius: np.ndarray, *, sensor: str = "right", resolution: str = "high") -> str:
    """The plugin's `writeThermalCelsiusCSV` layout: 7 `key;value` lines, a blank line, H rows of W values."""
    arr = quantize_celsius(celsius)
    h, w = arr.shape
    header = (f"sensor;{sensor}\nbit depth;14 bit\nwidth;{w}\nheight;{h}\nresolution;{resolution}\n"
              f"advanced radiometry support;yes\nunit;degrees Celsius\n\n")
    buf = io.StringIO()
    # %.6g matches the C++ stream's default 6 significant digits.
    np.savetxt(buf, arr, fmt="%.6g", delimiter=";")
    return header + buf.getvalue()


def read_thermal_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a Mobotix thermal celsius CSV into float32 (H, W), row 0 = top of the image.

    Width and height come from the header; negative values are kept. Wrong row or column counts and
    non-numbers raise ThermalFormatError naming the file and the 1-based line. Values equal
    `np.loadtxt(path, delimiter=";", skiprows=8).astype(np.float32)`; plain files take a compiled path
    (data.prepare.thermal_parse, >10x faster, see BENCHMARKS.md), anything unusual the line-by-line one that
    reports the error.
    """
    path = Path(path)
    raw = path.read_bytes()
    width, height, first, start = _thermal_header(path, raw)
    values = parse_grid(raw, start, width, height)
    if values is None:
        values = _parse_rows_checked(path, raw[start:], width, height, first)
    return values.astype(np.float32, copy=False)


def _thermal_header(path: Path, raw: bytes) -> tuple[int, int, int, int]:
    """(width, height, 1-based line number of the first data row, its byte offset)."""
    header: dict[str, str] = {}
    pos, line_no, blank_seen = 0, 1, False
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].decode("ascii", "replace").strip()
        if line:
            key, sep, value = line.partition(";")
            if blank_seen or not sep or _is_number(key):
                break  # the first data row (also when no blank line follows the header)
            header[key.strip().lower()] = value.strip()
        elif header:
            blank_seen = True
        pos, line_no = end + 1, line_no + 1
    try:
        width, height = int(header["width"]), int(header["height"])
    except (KeyError, ValueError):
        raise ThermalFormatError(f"{path}: header lacks integer width/height (got {header})") from None
    if not (0 < width <= MAX_THERMAL_SIDE and 0 < height <= MAX_THERMAL_SIDE):
        raise ThermalFormatError(f"{path}: header width/height must be 1..{MAX_THERMAL_SIDE} "
                                 f"(got {width}x{height})")
    return width, height, line_no, pos


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_rows_checked(path: Path, body: bytes, width: int, height: int, first: int) -> np.ndarray:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as e:
        raise ThermalFormatError(f"{path}: not a text file ({e.reason} at byte {e.start} of the data)") from None
    rows = text.rstrip().split("\n") if text.strip() else []
    if len(rows) < height:
        raise ThermalFormatError(f"{path}: expected {height} data rows, found {len(rows)} "
                                 f"(line {first + len(rows)}: file truncated?)")
    if len(rows) > height:
        raise ThermalFormatError(f"{path}: more than {height} data rows (line {first + height})")
    out = np.empty((height, width), np.float64)
    for r, row in enumerate(rows):
        cells = row.strip().split(";")
        if len(cells) != width:
            raise ThermalFormatError(f"{path}: line {first + r} has {len(cells)} values, expected {width}")
        try:
            out[r] = [float(v) for v in cells]
        except ValueError:
            bad = next(v for v in cells if not _is_number(v))
            raise ThermalFormatError(f"{path}: line {first + r}: not a number: {bad!r}") from None
        if not np.isfinite(out[r]).all():
            raise ThermalFormatError(f"{path}: line {first + r}: non-finite value")
        if (np.abs(out[r]) > _F32_MAX).any():
            raise ThermalFormatError(f"{path}: line {first + r}: {out[r][np.abs(out[r]) > _F32_MAX][0]:g} "
                                     "does not fit a float32")
    return out
