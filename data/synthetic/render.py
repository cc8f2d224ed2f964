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
- Optical (`_optical`, sources there): the CIE clear sky with its circumsolar aureole, whitened by the aerosol
  turbidity of the day (`aerosol_turbidity`), night and dusk glow; cirrus as a bright veil; low cloud from white
  (thin) to dark grey (thick bases) with silver linings toward the sun; horizon haze; the sun and lens glare.
  data.synthetic.camera then applies white balance, auto-exposure, noise and JPEG.
- Obstructions (data.synthetic.site): pixels whose ray meets the node's trees, roofs or far ground show that
  instead of sky: in thermal near the surface air temperature (plus up to 3 K in sunshine), which the clear-sky
  rule calls cloud, as on a real camera; in colour a dark, textured foliage/roof tone lit by the sun's
  elevation. Only the horizon row reaches low enough to see them. The masks are fixed per (node, preset) at
  nominal pointing: pointing jitter (0.2°) moves the sky, not the obstructions (below a thermal pixel).
- Truth: cloud where a layer's field ≥ its threshold (opacity ≥ 0.5), counted on a fixed TRUTH grid over the
  thermal field of view (independent of --size), over the unobstructed truth pixels only (`Rays.open`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from data.formats import thermal_fov_box
from data.sky import THERMAL_VFOV_DEG, clear_sky_celsius, preset_azimuth_deg, preset_elevation_deg
from data.synthetic.camera import LUMA
from data.synthetic.field import sample_layer, threshold
from data.synthetic.site import obstructed

EDGE = 0.15  # opacity ramp width in units of the field's standard deviation
RENDER_PX_DEG = 0.3  # optical colours are computed at ≈ this pitch, then resized: the field has no finer detail
TRUTH_W, TRUTH_H = 28, 21  # truth and oracle grid over the thermal field of view (1.7° pitch: cheap)
LAPSE_K_PER_M = 6.5e-3
LAYERS = ("low", "high")

# Colours are radiances relative to a white surface in full sun (1.0). Clear sky 90° from the sun at the zenith is
# ZENITH; HORIZON is the paler blue low down, scaled to the same luminance (the CIE gradation brightens it).
ZENITH = np.array([0.20, 0.42, 0.85], np.float32)
HORIZON = np.array([0.62, 0.76, 0.95], np.float32) * np.float32((ZENITH @ LUMA) / (np.array([0.62, 0.76, 0.95]) @ LUMA))
MILKY = np.full(3, ZENITH @ LUMA, np.float32) * np.array([0.98, 1.0, 1.04], np.float32)  # aerosol-whitened sky
NIGHT_SKY = np.array([0.02, 0.025, 0.05], np.float32)
DUSK = np.array([0.98, 0.55, 0.28], np.float32)
HAZE = np.array([0.80, 0.82, 0.85], np.float32)
NIGHT_CLOUD = np.array([0.06, 0.06, 0.07], np.float32)
SUNLIGHT = np.array([1.0, 0.95, 0.85], np.float32)
# CIE standard general sky (CIE S 011/E:2003, ISO 15469), clear types 12 (very clear) … 15 (turbid): gradation
# a, b and indicatrix c, d, e. The day's aerosol turbidity 0…1 interpolates between them.
CIE_CLEAR = np.array([[-1.0, -0.32, 10.0, -3.0, 0.45],    # 12
                      [-1.0, -0.32, 16.0, -3.0, 0.30],    # 13
                      [-1.0, -0.15, 16.0, -3.0, 0.30],    # 14
                      [-1.0, -0.15, 24.0, -2.8, 0.15]])   # 15
TURBIDITY_PERIODS_H = (41.0, 97.0, 173.0)  # aerosol load drifts with the air mass over days, not minutes
G_WATER, G_ICE = 0.85, 0.75  # asymmetry of cloud droplets and ice crystals (forward scattering)
# Optical depth of a low cloud from its edge to its thickest: τ = 3·LWP / (2·ρ_w·r_e) (Stephens 1978, J. Atmos. Sci.
# 35, 2123) gives 40 for a 270 g/m² liquid-water path of 10 µm droplets, a thick cumulus core or stratus deck.
TAU_THIN, TAU_THICK = 4.0, 40.0
OBSTACLE = np.array([0.10, 0.12, 0.07], np.float32)  # foliage and roofs in full sun: far darker than cloud
OBSTACLE_NIGHT = np.array([0.010, 0.011, 0.012], np.float32)
SUNLIT_K = 3.0  # sunlit leaves and roofs run a few K above the air temperature


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


def _rays(el_deg: np.ndarray, az_deg: np.ndarray, open_: np.ndarray | None = None) -> Rays:
    e, a = np.radians(el_deg), np.radians(az_deg)
    cot = 1 / np.tan(e)
    return Rays((cot * np.sin(a)).astype(np.float32), (cot * np.cos(a)).astype(np.float32),
                (-1 / (np.sin(e) * np.cos(e))).astype(np.float32), open_)


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
    # Obstructions (None: none in view): shade 0.7–1.3 where a tree or roof is, 0 where sky is, on the
    # optical render grid (ho, wo) and on the thermal pixels (h, w).
    ground_optical: np.ndarray | None = None
    ground_thermal: np.ndarray | None = None


def _angles(position: int, nx: int, ny: int, box, hfov: float):
    """Elevation, azimuth (deg) of the pixel centres of an nx × ny grid whose thermal field of view is `box`."""
    left, top, right, bottom = box
    ys, xs = np.arange(ny) + 0.5, np.arange(nx) + 0.5
    el = preset_elevation_deg(position) + THERMAL_VFOV_DEG * (0.5 - (ys - top) / (bottom - top))
    az = preset_azimuth_deg(position) + hfov * ((xs - left) / (right - left) - 0.5)
    return np.meshgrid(el, az, indexing="ij")


def _ground(key: int, position: int, el: np.ndarray, az: np.ndarray) -> np.ndarray | None:
    """Shade 0.7–1.3 (leaf and tile texture, fixed per node and preset) where the ray is obstructed, else 0."""
    hit = obstructed(key, el, az)
    if not hit.any():
        return None
    shade = np.random.default_rng([key, position, *el.shape]).uniform(0.7, 1.3, el.shape)
    return np.where(hit, shade, 0.0).astype(np.float32)


@lru_cache(maxsize=128)
def preset_view(position: int, optical_w: int, optical_h: int, thermal_w: int, thermal_h: int,
                key: int | None = None) -> PresetView:
    """The geometry of one preset; `key` (data.synthetic.layout.node_key) adds that node's obstructions."""
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
    ground_o = ground_t = truth_open = None
    if key is not None:
        ground_o = _ground(key, position, el_o, az_o)
        ground_t = _ground(key, position, *_angles(position, thermal_w, thermal_h, (0, 0, thermal_w, thermal_h),
                                                   hfov))
        hit = obstructed(key, el_t, az_t)
        truth_open = ~hit if hit.any() else None
    return PresetView(_rays(el_f, az_f), _rays(el_t, az_t, truth_open), field_box, (ho, wo), clear, low, direction,
                      preset_azimuth_deg(position), ground_o, ground_t)


@dataclass(frozen=True)
class Sky:
    """What the generator knows of one node's sky: weather plus the seeds of its textures (one set per date)."""

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
        age = self.weather.age(layer, t_s) if self.weather.evolution else 0.0
        # the local date's own field; near local midnight two dates' fields, mixed with weights whose squares sum to 1
        f = sum(np.float32(weight) * sample_layer(self.seed, self.key, LAYERS.index(layer), date, ex, ny,
                                                  base_m=lay.base_m, shift=shift, age=age, outer_m=lay.outer_m)
                for date, weight in self.weather.texture_days(t_s))
        return f, thr


def true_cloud(sky: Sky, rays: Rays, t_s: float, *, jitter=(0.0, 0.0), lead_s: float = 0.0) -> dict[str, float]:
    """Cloud fraction (opacity ≥ 0.5) per layer and in total on a ray grid, over the rays that reach the sky."""
    ex, ny = rays.jittered(*jitter)
    masks = {}
    for layer in LAYERS:
        ft = sky.field(layer, ex, ny, t_s, lead_s=lead_s)
        masks[layer] = np.zeros(ex.shape, bool) if ft is None else ft[0] >= ft[1]
    masks["total"] = masks["low"] | masks["high"]
    if rays.open is not None:
        masks = {k: m[rays.open] for k, m in masks.items()}
    return {k: float(m.mean()) for k, m in masks.items()}


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
    sunlit = max(math.sin(math.radians(sun_el)), 0.0)
    if view.ground_thermal is not None:  # trees and roofs: near the air temperature, warmer in sunshine
        ground_c = sky.weather.surface_celsius(t_s) + SUNLIT_K * sunlit + 3.0 * (view.ground_thermal - 1.0)
        celsius = np.where(view.ground_thermal > 0, ground_c, celsius)
    celsius = celsius + rng.normal(0.0, 0.25, celsius.shape)
    optical = {k: v[0] for k, v in op.items()}, {k: v[0] for k, v in thick.items()}
    colours = _optical(view, *optical, sun_el, sun_az, aerosol_turbidity(sky.seed, sky.key, t_s))
    if view.ground_optical is not None:  # lit by the sun's elevation (and a little skylight), never cloud-white
        light = float(smoothstep(-8.0, 8.0, sun_el)) * (0.5 + 0.5 * sunlit)
        tone = OBSTACLE_NIGHT + (OBSTACLE - OBSTACLE_NIGHT) * light
        colours = np.where(view.ground_optical[..., None] > 0, view.ground_optical[..., None] * tone, colours)
    return celsius, colours


@lru_cache(maxsize=8)
def _turbidity_phases(seed: int, key: int) -> tuple[float, ...]:
    """Drawn once per node: a generator per capture would cost more than the sum it feeds."""
    return tuple(np.random.default_rng([seed, key, 11]).uniform(0.0, 2 * math.pi, len(TURBIDITY_PERIODS_H)))


def aerosol_turbidity(seed: int, key: int, t_s: float) -> float:
    """The node's aerosol load 0 (very clear) … 1 (turbid) at time t: a smooth drift over days, drawn from the seed
    and node only (independent of the cloud weather, as air masses bring dust and smoke on their own schedule)."""
    periods = zip(TURBIDITY_PERIODS_H, _turbidity_phases(seed, key), strict=True)
    x = sum(math.sin(2 * math.pi * t_s / (h * 3600.0) + ph) for h, ph in periods)
    return 0.5 + 0.5 * math.tanh(x / 1.5)


def henyey_greenstein(cos_chi: np.ndarray, g: float) -> np.ndarray:
    """Scattering phase function, normalised to 4π over the sphere (1 = isotropic)."""
    x = 1 + g * g - 2 * g * cos_chi
    return (1 - g * g) / (x * np.sqrt(x))  # x**1.5 costs several times more


def _optical(view: PresetView, op: dict, thick: dict, sun_el: float, sun_az: float, turbidity: float):
    """Clear sky, then a cirrus veil, then low cloud, then horizon haze (each an alpha blend), plus the sun.

    - Clear sky: the CIE general sky luminance (gradation φ(Z) × indicatrix f(χ), χ the angle from the sun); the
      Rayleigh-like part 1 + e·cos²χ is blue, the aerosol forward peak c·(exp(dχ) − exp(dπ/2)) — the bright
      circumsolar aureole — has the sun's colour. Aerosol also whitens the blue (Lynch & Livingston 2001, Color
      and Light in Nature, ch. 2): a turbid day is milky, a clear one deep blue.
    - Low cloud base (τ from TAU_THIN to TAU_THICK): diffuse transmission of a plane-parallel cloud,
      T = 1 / (1 + 0.75(1 − g)τ) (two-stream; Bohren & Clothiaux 2006, Fundamentals of Atmospheric Radiation,
      ch. 6), relative to a thin cloud (τ 4, white):
      thick stratus and cumulus bases are dark grey. Thin parts toward the sun glow (silver lining): single
      forward scattering of the direct beam, P(χ)/4 · τ·exp(−τ), with a Henyey–Greenstein droplet phase function;
      cirrus does the same with ice crystals.
    - Sun: the disc and the lens's veiling glare (ISO 9358) behind what the beam crosses, exp(−τ).
    Every term is a per-pixel weight times a colour fixed for this capture: one (pixels × K) @ (K × 3) product.
    """
    day, lit = float(smoothstep(-8.0, 6.0, sun_el)), float(smoothstep(-8.0, 8.0, sun_el))
    sun_up = float(smoothstep(-3.0, 3.0, sun_el))
    dusk = math.exp(-(((sun_el + 2.0) / 5.0) ** 2))
    toward_sun = 0.5 + 0.5 * math.cos(math.radians(view.azimuth - sun_az))  # glow is strongest facing the sun
    glow = 0.75 * dusk * toward_sun * view.low
    tint = 0.5 * dusk * toward_sun
    cloud_lit = NIGHT_CLOUD * (1 - lit) * (1 - tint) + lit * (1 - tint) + DUSK * tint
    e, a = math.radians(sun_el), math.radians(sun_az)
    sun = np.array([math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)], np.float32)
    cos_chi = np.clip(view.direction @ sun, -1.0, 1.0)
    chi = np.arccos(cos_chi)
    ga, gb, ic, idd, ie = (float(np.interp(turbidity * 3, range(4), CIE_CLEAR[:, k])) for k in range(5))
    cos_z = np.maximum(view.direction[..., 2], 0.05)
    gradation = (1 + ga * np.exp(gb / cos_z)) / (1 + ga * math.exp(gb))
    rayleigh = (1 + ie * cos_chi**2) * gradation * day
    aureole = ic * (np.exp(idd * chi) - math.exp(idd * math.pi / 2)) * gradation * day
    milky = 0.1 + 0.5 * turbidity

    tau_low = TAU_THIN + (TAU_THICK - TAU_THIN) * thick["low"] ** 2
    tau_edge = tau_low * op["low"]  # the opacity ramp is where the cloud thins out to nothing
    shade = (1 + 0.75 * (1 - G_WATER) * TAU_THIN) / (1 + 0.75 * (1 - G_WATER) * tau_low)
    silver = henyey_greenstein(cos_chi, G_WATER) / 4 * tau_edge * np.exp(-tau_edge) * sun_up
    tau_high = (0.3 + 1.7 * thick["high"]) * op["high"]
    halo = henyey_greenstein(cos_chi, G_ICE) / 4 * tau_high * np.exp(-tau_high) * sun_up
    veil = (0.55 + 0.35 * thick["high"]) * op["high"]  # cirrus: thin but bright
    haze = (0.05 + 0.2 * turbidity) * view.low**2  # more aerosol: a milkier horizon
    under_low = op["low"] * (1 - haze)
    clear = (1 - veil) * (1 - op["low"]) * (1 - haze) * (1 - glow)
    chord = np.sqrt(np.maximum(2.0 - 2.0 * cos_chi, 0.0)) * np.float32(180 / math.pi)
    glare = (np.exp(-((chord / 2.0) ** 2)) + 0.35 * np.exp(-chord / 10.0)) * np.exp(-tau_edge - tau_high) * sun_up
    weights = np.stack([clear * (1 - day), clear * rayleigh * (1 - milky) * (1 - view.low),
                        clear * rayleigh * (1 - milky) * view.low, clear * rayleigh * milky, clear * aureole,
                        clear / np.maximum(1 - glow, 1e-6) * glow, veil * (1 - op["low"]) * (1 - haze),
                        under_low * shade, (halo * (1 - op["low"]) + silver) * (1 - haze), haze, glare], -1)
    palette = np.stack([NIGHT_SKY, ZENITH, HORIZON, MILKY, (ZENITH @ LUMA) * SUNLIGHT, DUSK, 0.97 * cloud_lit,
                        0.95 * cloud_lit, SUNLIGHT * lit, HAZE * (NIGHT_SKY + lit), SUNLIGHT]).astype(np.float32)
    return weights @ palette
