"""Weather regimes for the synthetic sky: one regime per local day, drawn from (seed, node, date).

Regimes (typical values, see docs/data.md "Synthetic sky" for where they come from):

| regime        | layer(s)                          | mean cover | base km | wind m/s | lifetime of a 1 km structure |
|---------------|-----------------------------------|------------|---------|----------|------------------------------|
| clear         | a few small cumulus               | 0–0.06     | 1–2     | 2–10     | 10–20 min                    |
| cumulus       | fair-weather cumulus (+ cirrus)   | 0.15–0.55  | 1–2     | 2–12     | 10–25 min                    |
| stratocumulus | extensive deck (+ cirrus)         | 0.65–0.95  | 0.6–2   | 2–10     | 1–3 h                        |
| cirrus        | thin high sheet (+ clear low sky) | 0.3–0.8    | 7–10    | 10–30    | 40–120 min                   |
| overcast      | stratus / nimbostratus            | 0.95–1     | 0.3–1.5 | 3–15     | 2–5 h                        |

Cumulus and stratocumulus days carry a cirrus layer above with probability CIRRUS_ABOVE (each layer its own
height and wind). `--regime mixed` deals the five regimes in shuffled blocks of five days (block = date
ordinal // 5), so every run of ≥ 9 days (it holds a whole block) sees each regime: equal shares by design,
not a site climatology.

Within a day the cover wanders slowly (logit ± 0.6, periods 5–31 h) and the wind by ±15 % (periods 7–41 h);
across local midnight every quantity is blended over ±TRANSITION_S. `evolution=False` freezes both (cover and
wind constant within a day). The layer displacement ∫ wind dt is integrated on a 60 s grid from the run's start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REGIMES = ("clear", "cumulus", "stratocumulus", "cirrus", "overcast")
# name: (cover range, base km range, wind m/s range, lifetime of a 1 km structure in minutes, outer scale km)
LOW = {"clear": ((0.0, 0.06), (1.0, 2.0), (2.0, 10.0), (10.0, 20.0), 1.5),
       "cumulus": ((0.15, 0.55), (1.0, 2.0), (2.0, 12.0), (10.0, 25.0), 2.0),
       "stratocumulus": ((0.65, 0.95), (0.6, 2.0), (2.0, 10.0), (60.0, 180.0), 10.0),
       "cirrus": ((0.0, 0.05), (1.0, 2.0), (2.0, 10.0), (10.0, 20.0), 1.5),
       "overcast": ((0.95, 1.0), (0.3, 1.5), (3.0, 15.0), (120.0, 300.0), 10.0)}
HIGH = ((0.3, 0.8), (7.0, 10.0), (10.0, 30.0), (40.0, 120.0), 10.0)
CIRRUS_ABOVE = 0.35
TRANSITION_S = 3 * 3600.0
STEP_S = 60.0


@dataclass(frozen=True)
class Layer:
    """One cloud layer on one day: mean cover, base height, wind (toward east, north), lifetime, outer scale."""

    cover: float
    base_m: float
    wind: tuple[float, float]
    tau_1km_s: float
    outer_m: float


@dataclass(frozen=True)
class Day:
    regime: str
    low: Layer
    high: Layer  # cover 0 when the day has no cirrus layer
    surface_c: float
    phases: tuple[float, ...]  # cover (3) and wind (6) wobble phases


def _layer(rng: np.random.Generator, spec, *, cover: float | None, wind_speed: float | None) -> Layer:
    (c0, c1), (b0, b1), (w0, w1), (t0, t1), outer = spec
    c, base, speed, tau = rng.uniform(c0, c1), rng.uniform(b0, b1) * 1e3, rng.uniform(w0, w1), rng.uniform(t0, t1)
    heading = rng.uniform(0, 2 * math.pi)  # direction the wind blows toward
    speed = speed if wind_speed is None else wind_speed
    return Layer(c if cover is None else cover, base, (speed * math.sin(heading), speed * math.cos(heading)),
                 tau * 60.0, outer * 1e3)


def draw_day(seed: int, key: int, ordinal: int, *, regime: str = "mixed", cloud_cover: float | None = None,
             wind_speed: float | None = None) -> Day:
    """The weather of local date `ordinal` (date.toordinal()): a pure function of its arguments."""
    if regime == "mixed":
        deck = np.random.default_rng([seed, key, ordinal // 5, 7]).permutation(len(REGIMES))
        regime = REGIMES[int(deck[ordinal % 5])]
    if regime not in REGIMES:
        raise ValueError(f"regime must be 'mixed' or one of {REGIMES}, got {regime!r}")
    rng = np.random.default_rng([seed, key, ordinal, 8])
    low = _layer(rng, LOW[regime], cover=cloud_cover, wind_speed=wind_speed)
    high = _layer(rng, HIGH, cover=None, wind_speed=wind_speed)
    with_cirrus = regime == "cirrus" or (regime in ("cumulus", "stratocumulus") and rng.random() < CIRRUS_ABOVE)
    if cloud_cover is not None or not with_cirrus:  # a pinned cover is the one layer's cover
        high = Layer(0.0, high.base_m, high.wind, high.tau_1km_s, high.outer_m)
    elif regime in ("cumulus", "stratocumulus"):
        regime += "+cirrus"
    return Day(regime, low, high, float(rng.uniform(8.0, 30.0)), tuple(rng.uniform(0, 2 * math.pi, 9)))


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 1e-6, 1 - 1e-6)
    return np.log(c / (1 - c))


class Weather:
    """Per-day regimes over a run's local days; every quantity is a smooth function of time t (s since EPOCH).

    All of it is tabulated once on a STEP_S grid over the padded run (vectorised) and read by linear
    interpolation: `layer(name, t)`, `displacement(name, t)` (∫ wind dt since the first padded day's start) and
    `age(name, t)` (∫ dt / τ_1km: how many 1 km lifetimes have passed, drives the field's evolution).
    """

    def __init__(self, *, days: list[tuple[int, float, float]], seed: int, key: int, regime: str = "mixed",
                 cloud_cover: float | None = None, wind_speed: float | None = None, evolution: bool = True):
        """`days`: (date ordinal, start s, end s) of consecutive local days; the first and last pad the run."""
        self.days = [draw_day(seed, key, o, regime=regime, cloud_cover=cloud_cover, wind_speed=wind_speed)
                     for o, _, _ in days]
        self.bounds = np.array([days[0][1]] + [e for _, _, e in days])
        self.evolution = evolution
        self.t0 = float(self.bounds[0])
        t = np.arange(self.bounds[0], self.bounds[-1] + 2 * STEP_S, STEP_S)
        n = len(self.days)
        i = np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, n - 1)
        to_start, to_end = t - self.bounds[i], self.bounds[i + 1] - t
        j = np.clip(np.where(to_start < to_end, i - 1, i + 1), 0, n - 1)
        x = np.clip(np.minimum(to_start, to_end) / TRANSITION_S, 0.0, 1.0)
        w = 0.5 * (1 - x) ** 2 * (1 + 2 * x)  # weight of the neighbouring day: 0.5 at midnight, 0 beyond ±3 h
        phases = np.array([d.phases for d in self.days])

        def blend(values: np.ndarray) -> np.ndarray:
            return (1 - w) * values[i] + w * values[j]

        swing = np.zeros_like(t)
        wob = np.ones_like(t)
        if evolution:
            for k, (amp, hours) in enumerate(((0.3, 5), (0.2, 13), (0.1, 31), (0.05, 7), (0.05, 17), (0.05, 41))):
                arg = 2 * np.pi * t / (hours * 3600)
                term = (1 - w) * np.sin(arg + phases[i, k]) + w * np.sin(arg + phases[j, k])
                if k < 3:
                    swing += amp * term  # cover, in logit units
                else:
                    wob += amp * term  # relative wind speed
        cols = []
        for name in ("low", "high"):
            lay = [getattr(d, name) for d in self.days]
            c = np.array([la.cover for la in lay])
            cover = 1 / (1 + np.exp(-(blend(_logit(c)) + swing)))
            cover = np.where(np.minimum(c[i], c[j]) >= 1.0, 1.0, cover)
            cover = np.where((c[i] <= 0.0) & ((w == 0.0) | (c[j] <= 0.0)), 0.0, cover)  # no layer: exactly none
            u = wob * blend(np.array([la.wind[0] for la in lay]))
            v = wob * blend(np.array([la.wind[1] for la in lay]))
            tau = np.exp(blend(np.log([la.tau_1km_s for la in lay])))
            outer = np.exp(blend(np.log([la.outer_m for la in lay])))
            base = blend(np.array([la.base_m for la in lay]))

            def integral(rate):
                return np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * STEP_S)])

            cols += [cover, u, v, base, tau, outer, integral(u), integral(v), integral(1 / tau)]
        cols.append(blend(np.array([d.surface_c for d in self.days])))
        self.table = np.stack(cols, axis=1)

    def _row(self, t: float) -> np.ndarray:
        pos = (t - self.t0) / STEP_S
        k = min(max(int(pos), 0), len(self.table) - 2)
        f = pos - k
        return self.table[k] * (1 - f) + self.table[k + 1] * f

    def day(self, t: float) -> Day:
        i = int(np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, len(self.days) - 1))
        return self.days[i]

    def layer(self, name: str, t: float) -> Layer:
        """The layer at time t: day values blended across midnight, cover and wind wobbling within the day."""
        r = self._row(t)[(0 if name == "low" else 9):][:6]
        return Layer(float(r[0]), float(r[3]), (float(r[1]), float(r[2])), float(r[4]), float(r[5]))

    def displacement(self, name: str, t: float) -> tuple[float, float]:
        r = self._row(t)[(0 if name == "low" else 9):]
        return float(r[6]), float(r[7])

    def age(self, name: str, t: float) -> float:
        return float(self._row(t)[(0 if name == "low" else 9) + 8])

    def surface_celsius(self, t: float) -> float:
        return float(self._row(t)[-1])
