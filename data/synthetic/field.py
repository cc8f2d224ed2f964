"""A cloud layer's multi-scale field: structure from ~0.1 to ~12 km, lifetimes growing with scale.

The field is a sum of BANDS spectral bands (wavelengths 0.1–0.5, 0.5–2.5, 2.5–12.5 km). Each band is a
periodic Gaussian texture made by spectral synthesis with a 2-D power spectrum ∝ k^-8/3, i.e. a 1-D (energy)
spectrum ∝ k^-5/3 as measured for cloud liquid water and optical depth, on its own grid (cell = shortest
wavelength / 5; the bilinear lookup's attenuation is pre-compensated so the sampled spectrum keeps its slope).
A layer weighs the bands by a von Kármán spectrum (k² + k_out²)^-4/3: above the outer scale (≈ 2 km for
cumulus, ≈ 10 km for decks) the spectrum flattens, so cumulus come as km-sized cells, not as one blob.

Every local date has its own textures, drawn from (seed, node, layer, date): no two days share a field, so
training, validation and test days of one seed hold different clouds. Across local midnight the field mixes two
dates' fields with variance-preserving weights (`Weather.texture_days`, the caller: data.synthetic.render.Sky).

Evolution: band b cross-fades between independent textures (the date's two textures, a fresh random shift per
window) over windows τ_b = τ_1km · (λ_b / 1 km)^(2/3) — the eddy turnover time of Kolmogorov turbulence — so
200 m puffs decorrelate within minutes while 5 km structures persist for hours. The whole layer moves with its
wind (`Weather.displacement`). Cloud where the unit-variance field exceeds Φ⁻¹(1 − cover).

Cost: one date's textures (both layers ≈ 6 MB) take ~0.15 s and are cached per process (lru_cache): a worker
walks its tasks forward in time, so it computes each date's textures once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from numba import njit

BANDS = ((100.0, 500.0), (500.0, 2500.0), (2500.0, 12500.0))  # wavelength ranges, m
BAND_N = (512, 256, 128)  # grid points per side; cell = shortest wavelength / 5
CELLS_PER_WAVE = 5
SLOPE_2D = -8.0 / 3.0  # 2-D power spectrum exponent (1-D energy spectrum k^-5/3)


def band_cell(b: int) -> float:
    return BANDS[b][0] / CELLS_PER_WAVE


def band_wavelength(b: int) -> float:
    return math.sqrt(BANDS[b][0] * BANDS[b][1])


@lru_cache(maxsize=8)  # a layer's textures of the dates in use: two around midnight, one otherwise
def band_textures(seed: int, key: int, layer: int, date: int) -> tuple[np.ndarray, ...]:
    """Per band: (2, N, N) float32, two independent unit-variance textures of that band on local date `date`
    (an ordinal)."""
    out = []
    for b, n in enumerate(BAND_N):
        cell = band_cell(b)
        kx = np.fft.fftfreq(n, d=cell)
        k = np.hypot(kx[:, None], kx[None, :])
        lo, hi = 1 / BANDS[b][1], 1 / BANDS[b][0]
        inside = (k >= lo) & (k < hi)
        amp = np.where(inside, np.maximum(k, lo) ** (SLOPE_2D / 2), 0.0)
        # bilinear lookup multiplies the spectrum by sinc²(k_x·cell)·sinc²(k_y·cell): undo it at synthesis
        amp /= (np.sinc(kx * cell)[:, None] * np.sinc(kx * cell)[None, :]) ** 2
        noise = np.random.default_rng([seed, key, layer, date, b, 3]).standard_normal((2, n, n))
        tex = np.fft.ifft2(np.fft.fft2(noise) * amp).real
        out.append((tex / tex.std(axis=(1, 2), keepdims=True)).astype(np.float32))
    return tuple(out)


@lru_cache(maxsize=64)
def band_weights(outer_m: float) -> np.ndarray:
    """Standard deviation of each band under a von Kármán spectrum with outer scale `outer_m`, summing to var 1.

    Power per band ∫ (k² + k0²)^-4/3 · k dk = [−3/2 · (k² + k0²)^-1/3] over the band (2-D, isotropic)."""
    k0 = 1 / outer_m
    var = np.array([(1 / hi**2 + k0**2) ** (-1 / 3) - (1 / lo**2 + k0**2) ** (-1 / 3) for lo, hi in BANDS])
    return np.sqrt(var / var.sum())


def threshold(cover: float) -> float:
    if cover < 1e-3:  # nothing to draw (also the far tail of a midnight blend from a clear day)
        return math.inf
    if cover >= 1.0:
        return -math.inf
    return NormalDist().inv_cdf(min(max(1 - cover, 1e-4), 1 - 1e-4))


@lru_cache(maxsize=32)
def _window(seed: int, key: int, layer: int, date: int, b: int, j: int) -> np.ndarray:
    """Complex texture R_j + i·R_{j+1} of band b: R_j = texture (j mod 2) rolled by a random shift of window j."""
    tex = band_textures(seed, key, layer, date)[b]
    n = tex.shape[-1]

    def r(i):
        sx, sy = np.random.default_rng([seed, key, layer, date, b, i, 4]).integers(0, n, 2)
        return np.roll(tex[i % 2], (int(sy), int(sx)), axis=(0, 1))

    return (r(j) + 1j * r(j + 1)).astype(np.complex64)


@njit(cache=True, nogil=True)
def _add_band(out, ex, ny, tex, scale, off_x, off_y, w_re, w_im):
    """out += bilinear(tex at (ex, ny)·scale + off) · (w_re, w_im); tex (n, n) complex64, n a power of 2.

    One compiled pass: numpy's four gathers and their temporaries cost several times more."""
    m = tex.shape[0] - 1
    for p in range(ex.size):
        gx = ex[p] * scale + off_x
        gy = ny[p] * scale + off_y
        x0, y0 = np.floor(gx), np.floor(gy)
        tx, ty = gx - x0, gy - y0
        ix, iy = np.int64(x0) & m, np.int64(y0) & m
        ix1, iy1 = (ix + 1) & m, (iy + 1) & m
        a, b, c, d = tex[iy, ix], tex[iy, ix1], tex[iy1, ix], tex[iy1, ix1]
        re = (a.real + (b.real - a.real) * tx) * (1 - ty) + (c.real + (d.real - c.real) * tx) * ty
        im = (a.imag + (b.imag - a.imag) * tx) * (1 - ty) + (c.imag + (d.imag - c.imag) * tx) * ty
        out[p] += re * w_re + im * w_im


def sample_layer(seed: int, key: int, layer: int, date: int, ex: np.ndarray, ny: np.ndarray, *, base_m: float,
                 shift: tuple[float, float], age: float, outer_m: float) -> np.ndarray:
    """Unit-variance field of local date `date` at rays whose ground offsets per metre of height are (ex east,
    ny north).

    The field is read at ground point base_m·(ex, ny) − shift (shift = the layer's displacement); `age` is the
    number of 1 km lifetimes elapsed (Weather.age; 0 = frozen), band b has aged age / (λ_b / 1 km)^(2/3).
    """
    weights = band_weights(round(outer_m, -1))  # 10 m steps: cacheable
    out = np.zeros(ex.size, np.float32)
    flat_x, flat_y = np.ascontiguousarray(ex).ravel(), np.ascontiguousarray(ny).ravel()
    for b, (w, n) in enumerate(zip(weights, BAND_N, strict=True)):
        cell = band_cell(b)
        pos = age / (band_wavelength(b) / 1000.0) ** (2 / 3)
        j = math.floor(pos)
        s = (pos - j) * math.pi / 2
        _add_band(out, flat_x, flat_y, _window(seed, key, layer, date, b, j), base_m / cell, (-shift[0] / cell) % n,
                  (-shift[1] / cell) % n, w * math.cos(s), w * math.sin(s))
    return out.reshape(ex.shape)
