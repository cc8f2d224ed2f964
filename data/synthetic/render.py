"""Synthetic sky physics: what one preset sees of the node's cloud layers at one time, in °C and in colour.

- Layers (data.synthetic.weather): a low layer (clear/cumulus/stratocumulus/overcast days) and a high cirrus
  layer, each with its own base height, cover, wind and lifetime; the field of each is data.synthetic.field.
- Geometry: pixel angles are linear in pixel position (row elevation exactly `data.sky.row_elevation_deg`);
  a ray at elevation e and azimuth a meets a layer at height h at ground offset h·cot(e)·(sin a, cos a), so
  presets at different azimuths see different parts of the same field and clouds reach downwind presets after
  upwind ones; a high layer moves slower across the image than a low one at the same wind. A small pointing
  jitter (angles per capture) moves the whole view, RGB and thermal together.
- Thermal: clear sky from `data.sky.clear_sky_celsius`; a low cloud radiates near the air temperature at its
  base (surface − 6.5 K/km, thicker = lower, warmer base); thin cirrus adds only 2–6 K over clear sky, below
  the cloud rule's margin (thermal cameras miss thin cirrus). The thermal image spans exactly `thermal_fov_box`
  of the optical half: each layer's field is computed once on a grid at twice the optical render pitch (the
  field has no structure below 100 m) and interpolated to the optical render grid and to the thermal pixels.
- Optical: sky by sun elevation (night, dusk glow facing the sun, blue day paler toward the horizon), cirrus as
  a bright white veil, low cloud white (thin) to grey (thick), horizon haze, sun glare; data.synthetic.camera
  then applies auto-exposure, noise and JPEG.
- Truth: cloud where a layer's field ≥ its threshold (opacity ≥ 0.5), counted on a fixed TRUTH grid over the
  thermal field of view (independent of --size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from data.formats import thermal_fov_box
from data.sky import THERMAL_VFOV_DEG, clear_sky_celsius, preset_azimuth_deg, preset_elevation_deg
from data.synthetic.field import sample_layer, threshold

EDGE = 0.15  # opacity ramp width in units of the field's standard deviation
RENDER_PX_DEG = 0.3  # optical colours are computed at ≈ this pitch, then resized: the field has no finer detail
TRUTH_W, TRUTH_H = 28, 21  # truth and oracle grid over the thermal field of view (1.7° pitch: cheap)
LAPSE_K_PER_M = 6.5e-3
LAYERS = ("low", "high")

ZENITH = np.array([0.20, 0.42, 0.85], np.float32)
HORIZON = np.array([0.62, 0.76, 0.95], np.float32)
NIGHT_SKY = np.array([0.02, 0.025, 0.05], np.float32)
DUSK = np.array([0.98, 0.55, 0.28], np.float32)
HAZE = np.array([0.80, 0.82, 0.85], np.float32)
NIGHT_CLOUD = np.array([0.06, 0.06, 0.07], np.float32)
GLARE = np.array([1.0, 0.95, 0.85], np.float32)


def smoothstep(lo: float, hi: float, x):
    t = np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class Rays:
    """Ground offsets per metre of layer height of a grid of rays, and their change with pointing."""

    ex: np.ndarray  # east, cot(e)·sin(a)
    ny: np.ndarray  # north, cot(e)·cos(a)
    g: np.ndarray  # −1/(sin e · cos e): d(ex, ny)/de = g·(ex, ny); d/da = (ny, −ex)
    open: np.ndarray | None = None  # bool: the ray reaches the sky (None: every ray does)

    def jittered(self, d_el: float, d_az: float) -> tuple[np.ndarray, np.ndarray]:
        if d_el == 0.0 and d_az == 0.0:
            return self.ex, self.ny
        de, da = np.float32(d_el), np.float32(d_az)
        k = 1 + de * self.g
        return self.ex * k + da * self.ny, self.ny * k - da * self.ex


def _rays(el_deg: np.ndarray, az_deg: np.ndarray) -> Rays:
    e, a = np.radians(el_deg), np.radians(az_deg)
    cot = 1 / np.tan(e)
    return Rays((cot * np.sin(a)).astype(np.float32), (cot * np.cos(a)).astype(np.float32),
                (-1 / (np.sin(e) * np.cos(e))).astype(np.float32))


@dataclass(frozen=True)
class PresetView:
    field: Rays  # (ho/2, wo/2): the field is sampled at twice the render pitch, then interpolated
    truth: Rays  # (TRUTH_H, TRUTH_W)
    field_box: tuple[float, float, float, float]  # thermal field of view in field-grid pixels (l, t, r, b)
    optical_hw: tuple[int, int]  # render grid
    thermal_clear: np.ndarray  # (h, 1) clear-sky °C per thermal row
    low: np.ndarray  # (ho, wo) 0 overhead … 1 at 30° elevation: how much horizon haze a pixel sees
    direction: np.ndarray  # (ho, wo, 3) unit vectors (east, north, up)
    azimuth: float


def _angles(position: int, nx: int, ny: int, box, hfov: float):
    """Elevation, azimuth (deg) of the pixel centres of an nx × ny grid whose thermal field of view is `box`."""
    left, top, right, bottom = box
    ys, xs = np.arange(ny) + 0.5, np.arange(nx) + 0.5
    el = preset_elevation_deg(position) + THERMAL_VFOV_DEG * (0.5 - (ys - top) / (bottom - top))
    az = preset_azimuth_deg(position) + hfov * ((xs - left) / (right - left) - 0.5)
    return np.meshgrid(el, az, indexing="ij")


@lru_cache(maxsize=64)
def preset_view(position: int, optical_w: int, optical_h: int, thermal_w: int, thermal_h: int) -> PresetView:
    left, top, right, bottom = thermal_fov_box(optical_w, optical_h)
    hfov = THERMAL_VFOV_DEG * thermal_w / thermal_h
    step = max(1, round(RENDER_PX_DEG / (THERMAL_VFOV_DEG / (bottom - top))))
    wo, ho = optical_w // step, optical_h // step
    el_o, az_o = _angles(position, wo, ho, (left / step, top / step, right / step, bottom / step), hfov)
    wf, hf = max(wo // 2, 1), max(ho // 2, 1)
    rx, ry = optical_w / wf, optical_h / hf
    field_box = (left / rx, top / ry, right / rx, bottom / ry)
    el_f, az_f = _angles(position, wf, hf, field_box, hfov)
    el_t, az_t = _angles(position, TRUTH_W, TRUTH_H, (0, 0, TRUTH_W, TRUTH_H), hfov)
    e, a = np.radians(el_o), np.radians(az_o)
    direction = np.stack([np.cos(e) * np.sin(a), np.cos(e) * np.cos(a), np.sin(e)], axis=-1).astype(np.float32)
    rows = preset_elevation_deg(position) + THERMAL_VFOV_DEG * (0.5 - (np.arange(thermal_h) + 0.5) / thermal_h)
    clear = clear_sky_celsius(rows)[:, None].astype(np.float32)
    low = np.clip((90.0 - el_o) / 60.0, 0.0, 1.0).astype(np.float32)
    return PresetView(_rays(el_f, az_f), _rays(el_t, az_t), field_box, (ho, wo), clear, low, direction,
                      preset_azimuth_deg(position))


@dataclass(frozen=True)
class Sky:
    """What the generator knows of one node's sky: weather plus the seeds of its textures."""

    weather: object  # data.synthetic.weather.Weather
    seed: int
    key: int

    def field(self, layer: str, ex: np.ndarray, ny: np.ndarray, t_s: float, *, lead_s: float = 0.0):
        """(field, threshold) of a layer at rays (ex, ny) at time t; lead_s > 0 advects the field frozen at t
        by the wind at t for lead_s seconds (the advection oracle). None when the layer has no cloud."""
        lay = self.weather.layer(layer, t_s)
        thr = threshold(lay.cover)
        if thr == math.inf:
            return None
        dx, dy = self.weather.displacement(layer, t_s)
        shift = (dx + lay.wind[0] * lead_s, dy + lay.wind[1] * lead_s)
        f = sample_layer(self.seed, self.key, LAYERS.index(layer), ex, ny, base_m=lay.base_m, shift=shift,
                         age=self.weather.age(layer, t_s) if self.weather.evolution else 0.0, outer_m=lay.outer_m)
        return f, thr


def true_cloud(sky: Sky, rays: Rays, t_s: float, *, jitter=(0.0, 0.0), lead_s: float = 0.0) -> dict[str, float]:
    """Cloud fraction (opacity ≥ 0.5) per layer and in total on a ray grid."""
    ex, ny = rays.jittered(*jitter)
    masks = {}
    for layer in LAYERS:
        ft = sky.field(layer, ex, ny, t_s, lead_s=lead_s)
        masks[layer] = np.zeros(ex.shape, bool) if ft is None else ft[0] >= ft[1]
    return {"low": float(masks["low"].mean()), "high": float(masks["high"].mean()),
            "total": float((masks["low"] | masks["high"]).mean())}


def _resample(img: np.ndarray, box, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img, "F").resize((w, h), Image.BILINEAR, box=box))


def render(sky: Sky, view: PresetView, t_s: float, thermal_w: int, thermal_h: int, *, sun_el: float,
           sun_az: float, jitter=(0.0, 0.0), rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(thermal °C (h, w) float64, optical colours (ho, wo, 3) before exposure, ≥ 0)."""
    ex, ny = view.field.jittered(*jitter)
    ho, wo = view.optical_hw
    whole = (0, 0, ex.shape[1], ex.shape[0])
    op, thick = {}, {}  # (optical grid, thermal grid) per layer
    for layer in LAYERS:
        ft = sky.field(layer, ex, ny, t_s)
        if ft is None:
            op[layer] = thick[layer] = (np.zeros((ho, wo), np.float32), np.zeros((thermal_h, thermal_w), np.float32))
            continue
        f, thr = ft
        grids = (_resample(f, whole, wo, ho), _resample(f, view.field_box, thermal_w, thermal_h))
        op[layer] = tuple(np.clip((g - np.float32(thr)) / EDGE + 0.5, 0.0, 1.0) for g in grids)
        thick[layer] = tuple(np.clip((g - np.float32(thr)) / 1.5, 0.0, 1.0) for g in grids)

    low = sky.weather.layer("low", t_s)
    t_low = sky.weather.surface_celsius(t_s) - LAPSE_K_PER_M * low.base_m
    celsius = view.thermal_clear + op["high"][1] * (2.0 + 4.0 * thick["high"][1])
    cloud_c = t_low + 4.5 * thick["low"][1]  # thick cloud: lower, warmer base
    celsius = celsius + op["low"][1] * (cloud_c - celsius)
    celsius = celsius + rng.normal(0.0, 0.25, celsius.shape)
    optical = {k: v[0] for k, v in op.items()}, {k: v[0] for k, v in thick.items()}
    return celsius, _optical(view, *optical, sun_el, sun_az, sky.weather.day(t_s).phases[6])


def _optical(view: PresetView, op: dict, thick: dict, sun_el: float, sun_az: float, haze_phase: float):
    """Clear sky, then a cirrus veil, then low cloud, then horizon haze (each an alpha blend), plus glare.

    Every term is a per-pixel weight times a colour fixed for this capture: one (pixels × 8) @ (8 × 3) product.
    """
    day, lit = float(smoothstep(-8.0, 6.0, sun_el)), float(smoothstep(-8.0, 8.0, sun_el))
    dusk = math.exp(-(((sun_el + 2.0) / 5.0) ** 2))
    toward_sun = 0.5 + 0.5 * math.cos(math.radians(view.azimuth - sun_az))  # glow is strongest facing the sun
    glow = 0.75 * dusk * toward_sun * view.low
    tint = 0.5 * dusk * toward_sun
    cloud_lit = NIGHT_CLOUD * (1 - lit) * (1 - tint) + lit * (1 - tint) + DUSK * tint
    veil = (0.55 + 0.35 * thick["high"]) * op["high"]  # cirrus: thin but bright
    haze = (0.1 + 0.08 * math.sin(haze_phase)) * view.low**2  # humid days: a milkier horizon
    under_low = op["low"] * (1 - haze)
    clear = (1 - veil) * (1 - op["low"]) * (1 - haze) * (1 - glow)
    glare = np.zeros_like(veil)
    if sun_el > -3.0:
        e, a = math.radians(sun_el), math.radians(sun_az)
        sun = np.array([math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)], np.float32)
        chord = np.sqrt(np.maximum(2.0 - 2.0 * (view.direction @ sun), 0.0)) * np.float32(180 / math.pi)
        glare = (np.exp(-((chord / 2.0) ** 2)) + 0.35 * np.exp(-chord / 10.0)) * (1.0 - 0.7 * op["low"])
        glare *= float(smoothstep(-3.0, 3.0, sun_el))
    weights = np.stack([clear, clear * view.low, clear / np.maximum(1 - glow, 1e-6) * glow,
                        veil * (1 - op["low"]) * (1 - haze), under_low, under_low * thick["low"], haze, glare], -1)
    palette = np.stack([NIGHT_SKY + (ZENITH - NIGHT_SKY) * day, (HORIZON - ZENITH) * day, DUSK, 0.97 * cloud_lit,
                        0.95 * cloud_lit, -0.5 * cloud_lit, HAZE * (NIGHT_SKY + lit), GLARE]).astype(np.float32)
    return weights @ palette
