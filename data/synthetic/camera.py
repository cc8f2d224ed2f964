"""The Mobotix as the synthetic sky models it: pointing jitter, white balance, auto-exposure, sensor noise, JPEG,
thermal preview.

- Pointing jitter: each capture's pan/tilt lands JITTER_DEG (σ, default 0.2°) off the preset, RGB and thermal
  together (one camera head).
- Auto-exposure: the gain, limited to [GAIN_MIN, GAIN_MAX], brings the mean luminance of the whole frame as the
  sensor records it (clipped at full scale: a sun in view counts as white, not as its true radiance) to
  EXPOSURE_TARGET, found by a few steps of the camera's metering loop. A bright overcast frame and a blue clear one
  end up at similar mean brightness, a frame with the sun or its aureole in it comes out darker elsewhere, night
  stays dark (the gain runs out); noise grows with the gain.
- Auto white balance: grey-world (Buchsbaum 1980, J. Franklin Inst. 310, 1), applied on the red–blue
  (colour-temperature) axis only and only AWB_STRENGTH of the way, within ±AWB_LIMIT: a camera limits its
  illuminant estimate to plausible daylight, so a blue sky stays blue but the rendering of a frame's colour
  depends on what else is in it.
- JPEG quality 90: the quantisation tables of a real Mobotix JPEG scale the standard tables by ≈ 0.2.
"""

from __future__ import annotations

import math
from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import Image

JITTER_DEG = 0.2
EXPOSURE_TARGET = 0.42
GAIN_MIN, GAIN_MAX = 0.4, 3.0
METERING_STEPS = 4
AWB_STRENGTH, AWB_LIMIT = 0.3, 0.25
NOISE_DN = 1.5
JPEG_QUALITY = 90
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def pointing_jitter(rng: np.random.Generator, sigma_deg: float) -> tuple[float, float]:
    """(elevation, azimuth) offsets in radians."""
    if sigma_deg <= 0:
        return 0.0, 0.0
    d_el, d_az = rng.normal(0.0, np.radians(sigma_deg), 2)
    return float(d_el), float(d_az)


def exposure_gain(img: np.ndarray) -> float:
    """Gain that brings the frame's clipped mean luminance to EXPOSURE_TARGET, within the camera's range."""
    luma = img.reshape(-1, 3) @ LUMA
    gain = 1.0
    for _ in range(METERING_STEPS):  # the clipped mean depends on the gain: iterate to its fixed point
        mean = float(np.minimum(luma * gain, 1.0).mean()) / gain
        gain = float(np.clip(EXPOSURE_TARGET / max(mean, 1e-6), GAIN_MIN, GAIN_MAX))
    return gain


def white_balance(img: np.ndarray) -> np.ndarray:
    """Red and blue channel gains (green fixed) that pull the frame's mean colour part way to grey."""
    flat = img.reshape(-1, 3)
    r, g, b = np.ones(len(flat), np.float32) @ flat / len(flat) + 1e-6  # a matrix product: mean(0) is slow on (n, 3)
    shift = np.clip(AWB_STRENGTH * 0.5 * math.log(b / r), -AWB_LIMIT, AWB_LIMIT)  # log(B/R): colour temperature
    return np.array([math.exp(shift), 1.0, math.exp(-shift)], np.float32)


@lru_cache(maxsize=2)
def noise_pool(seed: int, n: int) -> np.ndarray:
    """Sensor noise (DN, σ = NOISE_DN) to slice from: fresh Gaussians per frame cost more than rendering it."""
    return np.rint(np.random.default_rng([seed, 2]).normal(0.0, NOISE_DN, n + (1 << 20))).astype(np.int16)


def expose(img: np.ndarray, width: int, height: int, noise: np.ndarray) -> np.ndarray:
    """Colours at render pitch → auto-exposed uint8 (height, width, 3); noise (int16, that shape) × gain level."""
    img = img * white_balance(img)
    gain = exposure_gain(img)
    small = Image.fromarray((np.clip(img * gain, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    full = np.asarray(small.resize((width, height), Image.BILINEAR), dtype=np.int16)
    level = 1 if gain < 1.5 else 2  # shot noise relative to signal grows as the gain rises
    return np.clip(full + level * noise, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


_IRON = np.array([[0, 0, 0, 10], [0.25, 80, 0, 150], [0.5, 200, 30, 100], [0.75, 250, 150, 0],
                  [1.0, 255, 255, 220]], np.float64)
_IRON_LUT = np.stack([np.interp(np.linspace(0, 1, 256), _IRON[:, 0], _IRON[:, c]) for c in (1, 2, 3)],
                     -1).astype(np.uint8)


def false_colour(celsius: np.ndarray, width: int, height: int) -> np.ndarray:
    """The camera's thermal preview: auto-scaled 'iron' palette, sensor pixels blown up to (height, width, 3)."""
    lo, hi = float(celsius.min()), float(celsius.max())
    level = ((celsius - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    return np.asarray(Image.fromarray(_IRON_LUT[level]).resize((width, height), Image.NEAREST))
