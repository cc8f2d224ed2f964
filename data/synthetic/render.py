"""The synthetic sky's physics and pixels, used by `python -m data.synthetic` (see that module to run it).

Model (assumptions, not measurements):
- One cloud layer per node at CLOUD_BASE_M. Its optical depth is a periodic Gaussian random field built from
  two independent textures, f = cos(φ(t))·T1 + sin(φ(t))·T2, so it keeps unit variance while it evolves
  (φ turns once every EVOLVE_PERIOD_S). The layer is advected by a slowly varying wind: the field at ground
  point p and time t is f(p − D(t)), D = ∫ wind dt (closed form: wind = mean + a few slow sinusoids).
- Cloud where f ≥ thr(t), thr = Φ⁻¹(1 − cover(t)); cover(t) wanders slowly around --cloud-cover.
  Opacity ramps from 0 to 1 over ±EDGE/2 around thr; the true cloud fraction counts opacity ≥ 0.5.
- Camera: pixel angles are linear in pixel position (row elevation exactly `data.sky.row_elevation_deg`);
  each ray is projected onto the cloud layer, so presets at different azimuths see different parts of the
  same field and clouds reach downwind presets after upwind ones. The thermal image spans exactly
  `thermal_fov_box` of the optical half at the same angular pixel pitch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from PIL import Image

from data.formats import thermal_fov_box
from data.sky import SKY_ELEVATION_DEG, THERMAL_VFOV_DEG, clear_sky_celsius, preset_azimuth_deg, row_elevation_deg

CLOUD_BASE_M = 2000.0
CELL_M = 50.0  # texture cell; the periodic domain is TEX_N·CELL_M = 51 km wide
TEX_N = 1024
EVOLVE_PERIOD_S = 4 * 3600.0
EDGE = 0.15  # opacity ramp width in units of the field's standard deviation
RENDER_PX_DEG = 0.3  # optical colours are computed at ≈ this pitch, then resized: the field has no finer detail
EPOCH_S = 1_577_836_800  # 2020-01-01T00:00Z: times are seconds since this, so a day renders the same in any run

NIGHT_SKY = np.array([0.02, 0.025, 0.05], np.float32)
ZENITH = np.array([0.20, 0.42, 0.85], np.float32)
HORIZON = np.array([0.62, 0.76, 0.95], np.float32)
DUSK = np.array([0.98, 0.55, 0.28], np.float32)
NIGHT_CLOUD = np.array([0.06, 0.06, 0.07], np.float32)
GLARE = np.array([1.0, 0.95, 0.85], np.float32)


def node_key(vsn: str) -> int:
    return zlib.crc32(vsn.upper().encode())


def smoothstep(lo: float, hi: float, x):
    t = np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _slow(t_s: float, amps, periods, phases) -> float:
    return float(sum(a * math.sin(2 * math.pi * t_s / p + ph) for a, p, ph in zip(amps, periods, phases, strict=True)))


class CloudField:
    """The node's evolving, advected cloud layer; all of it is a pure function of (seed, vsn, t)."""

    def __init__(self, *, seed: int, vsn: str, cloud_cover: float, wind_speed: float):
        rng = np.random.default_rng([seed, node_key(vsn), 1])
        self.tex = _textures(rng)  # (N·N,) complex64: T1 + i·T2
        self.cover = cloud_cover
        heading = rng.uniform(0, 2 * math.pi)  # direction the wind blows toward
        self.mean_uv = (wind_speed * math.sin(heading), wind_speed * math.cos(heading))
        # Wind: mean + 3 sinusoids per component (periods 7–41 h); amplitude 0.15·speed each.
        self.wind_periods = np.array([7.0, 17.0, 41.0]) * 3600
        self.wind_amp = 0.15 * wind_speed * np.ones(3)
        self.wind_phase = rng.uniform(0, 2 * math.pi, (2, 3))
        self.cover_phase = rng.uniform(0, 2 * math.pi, 3)
        self.evolve_phase = rng.uniform(0, 2 * math.pi)
        self.temp_phase = rng.uniform(0, 2 * math.pi)

    def wind(self, t_s: float) -> tuple[float, float]:
        w = 2 * math.pi / self.wind_periods
        u, v = (m + float(np.sum(self.wind_amp * np.cos(w * t_s + ph)))
                for m, ph in zip(self.mean_uv, self.wind_phase, strict=True))
        return u, v

    def displacement(self, t_s: float) -> tuple[float, float]:
        """∫₀ᵗ wind dt in metres (closed form of `wind`)."""
        w = 2 * math.pi / self.wind_periods
        return tuple(m * t_s + float(np.sum(self.wind_amp / w * (np.sin(w * t_s + ph) - np.sin(ph))))
                     for m, ph in zip(self.mean_uv, self.wind_phase, strict=True))

    def threshold(self, t_s: float) -> float:
        if self.cover <= 0.0:
            return math.inf
        if self.cover >= 1.0:
            return -math.inf
        logit = math.log(self.cover / (1 - self.cover))
        swing = _slow(t_s, (1.0, 0.8, 0.6), (5 * 3600, 13 * 3600, 31 * 3600), self.cover_phase)
        cover = 1 / (1 + math.exp(-(logit + swing)))
        return NormalDist().inv_cdf(min(max(1 - cover, 1e-4), 1 - 1e-4))

    def cloud_base_celsius(self, t_s: float) -> float:
        return -8.0 + 5.0 * math.sin(2 * math.pi * t_s / (29 * 3600) + self.temp_phase)

    def sample(self, gx: np.ndarray, gy: np.ndarray, t_s: float) -> np.ndarray:
        """Field values at ground points given in texture cells (gx east, gy north) at time t."""
        dx, dy = self.displacement(t_s)
        gx = gx + np.float32((-dx / CELL_M) % TEX_N)
        gy = gy + np.float32((-dy / CELL_M) % TEX_N)
        x0, y0 = np.floor(gx), np.floor(gy)
        fx, fy = gx - x0, gy - y0
        ix, iy = x0.astype(np.intp) & (TEX_N - 1), y0.astype(np.intp) & (TEX_N - 1)
        ix1, r0, r1 = (ix + 1) & (TEX_N - 1), iy * TEX_N, ((iy + 1) & (TEX_N - 1)) * TEX_N
        a, b, c, d = self.tex[r0 + ix], self.tex[r0 + ix1], self.tex[r1 + ix], self.tex[r1 + ix1]
        top, bottom = a + (b - a) * fx, c + (d - c) * fx
        both = top + (bottom - top) * fy  # T1 + i·T2, bilinear
        phi = 2 * math.pi * t_s / EVOLVE_PERIOD_S + self.evolve_phase
        return both.real * np.float32(math.cos(phi)) + both.imag * np.float32(math.sin(phi))


def _textures(rng: np.random.Generator) -> np.ndarray:
    """Two unit-variance periodic Gaussian fields, power ∝ (k² + k0²)^-1.5: km-sized clouds with ragged edges."""
    k = np.fft.fftfreq(TEX_N, d=CELL_M)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    amp = (k2 + (1 / 2500.0) ** 2) ** -0.75
    amp[0, 0] = 0.0
    noise = rng.standard_normal((2, TEX_N, TEX_N))
    field = np.fft.ifft2(np.fft.fft2(noise) * amp).real
    field /= field.std(axis=(1, 2), keepdims=True)
    return (field[0] + 1j * field[1]).astype(np.complex64).ravel()  # one gather fetches both textures


@dataclass(frozen=True)
class PresetView:
    """Per-preset sampling maps, computed once: ground points (texture cells) of each pixel's ray."""

    thermal_gx: np.ndarray  # (h, w)
    thermal_gy: np.ndarray
    thermal_clear: np.ndarray  # (h, 1) clear-sky °C per thermal row
    optical_gx: np.ndarray  # (ho, wo) at render pitch
    optical_gy: np.ndarray
    optical_low: np.ndarray  # (ho, wo) 0 overhead … 1 at 30° elevation: how much horizon haze a pixel sees
    optical_dir: np.ndarray  # (ho, wo, 3) unit vectors (east, north, up)
    azimuth: float


def _ground(el_deg: np.ndarray, az_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = CLOUD_BASE_M / np.tan(np.radians(el_deg))
    az = np.radians(az_deg)
    return (dist * np.sin(az) / CELL_M).astype(np.float32), (dist * np.cos(az) / CELL_M).astype(np.float32)


@lru_cache(maxsize=64)
def preset_view(position: int, optical_w: int, optical_h: int, thermal_w: int, thermal_h: int) -> PresetView:
    az0 = preset_azimuth_deg(position)
    hfov = THERMAL_VFOV_DEG * thermal_w / thermal_h
    el_t = row_elevation_deg(thermal_h)[:, None] + np.zeros((1, thermal_w))
    az_t = az0 + hfov * ((np.arange(thermal_w) + 0.5) / thermal_w - 0.5)[None, :] + np.zeros((thermal_h, 1))
    tgx, tgy = _ground(el_t, az_t)
    # Optical half: same angular pitch, thermal box = thermal_fov_box; render on a coarser grid of pixel centres.
    left, top, right, bottom = thermal_fov_box(optical_w, optical_h)
    step = max(1, round(RENDER_PX_DEG / (THERMAL_VFOV_DEG / (bottom - top))))
    ys = (np.arange(optical_h // step) + 0.5) * step
    xs = (np.arange(optical_w // step) + 0.5) * step
    el_o = SKY_ELEVATION_DEG + THERMAL_VFOV_DEG * (0.5 - (ys - top) / (bottom - top))
    az_o = az0 + hfov * ((xs - left) / (right - left) - 0.5)
    el_o, az_o = np.meshgrid(el_o, az_o, indexing="ij")
    ogx, ogy = _ground(el_o, az_o)
    e, a = np.radians(el_o), np.radians(az_o)
    direction = np.stack([np.cos(e) * np.sin(a), np.cos(e) * np.cos(a), np.sin(e)], axis=-1).astype(np.float32)
    clear = clear_sky_celsius(row_elevation_deg(thermal_h))[:, None].astype(np.float32)
    low = np.clip((90.0 - el_o) / 60.0, 0.0, 1.0).astype(np.float32)
    return PresetView(tgx, tgy, clear, ogx, ogy, low, direction, az0)


def opacity(f: np.ndarray, thr: float) -> np.ndarray:
    return np.clip((f - np.float32(thr)) / EDGE + 0.5, 0.0, 1.0)


def render_thermal(field: CloudField, view: PresetView, t_s: float, rng: np.random.Generator):
    """(°C image (h, w) float64, true cloud fraction): clear sky + cloud emission weighted by opacity."""
    f = field.sample(view.thermal_gx, view.thermal_gy, t_s)
    thr = field.threshold(t_s)
    op = opacity(f, thr)
    cloud_c = field.cloud_base_celsius(t_s) + 3.0 * np.clip(f - thr, 0.0, 2.0)  # thick cloud: lower, warmer base
    celsius = view.thermal_clear + op * (cloud_c - view.thermal_clear)
    celsius = celsius + rng.normal(0.0, 0.25, celsius.shape)
    return celsius, float((f >= thr).mean())


def render_optical(field: CloudField, view: PresetView, t_s: float, sun_el: float, sun_az: float) -> np.ndarray:
    """Optical colours in [0, 1], (ho, wo, 3) at render pitch: sky by sun elevation, clouds, glare.

    Clear sky: night black → twilight glow near the horizon facing the sun → blue by day, paler toward the
    horizon. Clouds: dark at night, white (thin) to grey (thick) by day, tinted at dusk. Every term is a
    per-pixel weight times a colour fixed for this capture, so the image is one (pixels × 6) @ (6 × 3) product.
    """
    f = field.sample(view.optical_gx, view.optical_gy, t_s)
    thr = field.threshold(t_s)
    op = opacity(f, thr)
    day, lit = float(smoothstep(-8.0, 6.0, sun_el)), float(smoothstep(-8.0, 8.0, sun_el))
    dusk = math.exp(-(((sun_el + 2.0) / 5.0) ** 2))
    toward_sun = 0.5 + 0.5 * math.cos(math.radians(view.azimuth - sun_az))  # glow is strongest facing the sun
    glow = (0.75 * dusk * toward_sun) * view.optical_low
    cloud_tint = 0.5 * dusk * toward_sun
    grey = 0.95 - 0.45 * np.clip((f - thr) / 1.5, 0.0, 1.0)  # thick cloud is darker underneath
    clear_unlit = (1.0 - op) * (1.0 - glow)
    glare = np.zeros_like(op)
    if sun_el > -3.0:
        e, a = math.radians(sun_el), math.radians(sun_az)
        sun = np.array([math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)], np.float32)
        chord = np.sqrt(np.maximum(2.0 - 2.0 * (view.optical_dir @ sun), 0.0)) * np.float32(180 / math.pi)
        glare = (np.exp(-((chord / 2.0) ** 2)) + 0.35 * np.exp(-chord / 10.0)) * (1.0 - 0.7 * op)
        glare *= float(smoothstep(-3.0, 3.0, sun_el))
    weights = np.stack([clear_unlit, clear_unlit * view.optical_low, (1.0 - op) * glow, op, op * grey, glare], -1)
    palette = np.stack([NIGHT_SKY + (ZENITH - NIGHT_SKY) * day, (HORIZON - ZENITH) * day, DUSK,
                        NIGHT_CLOUD * (1 - lit) * (1 - cloud_tint) + DUSK * cloud_tint,
                        np.full(3, lit * (1 - cloud_tint), np.float32), GLARE]).astype(np.float32)
    return weights @ palette


def to_pixels(img: np.ndarray, width: int, height: int, noise: np.ndarray) -> np.ndarray:
    """[0,1] colours at render pitch → uint8 (height, width, 3) with sensor noise (int16, same shape) added."""
    small = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    full = np.asarray(small.resize((width, height), Image.BILINEAR), dtype=np.int16)
    return np.clip(full + noise, 0, 255).astype(np.uint8)


_IRON = np.array([[0, 0, 0, 10], [0.25, 80, 0, 150], [0.5, 200, 30, 100], [0.75, 250, 150, 0],
                  [1.0, 255, 255, 220]], np.float64)
_IRON_LUT = np.stack([np.interp(np.linspace(0, 1, 256), _IRON[:, 0], _IRON[:, c]) for c in (1, 2, 3)],
                     -1).astype(np.uint8)


def false_colour(celsius: np.ndarray, width: int, height: int) -> np.ndarray:
    """The camera's thermal preview: auto-scaled 'iron' palette, sensor pixels blown up to (height, width, 3)."""
    lo, hi = float(celsius.min()), float(celsius.max())
    level = ((celsius - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    return np.asarray(Image.fromarray(_IRON_LUT[level]).resize((width, height), Image.NEAREST))
