"""Weather regimes for the synthetic sky: one regime per local day, drawn from (seed, node, date).

Regimes (typical values, see docs/data.md "Synthetic sky" for where they come from):

| regime        | layer(s)                          | cover (Cu: peak) | base km | wind m/s | life of 1 km | cycle |
|---------------|-----------------------------------|------------------|---------|----------|--------------|-------|
| clear         | a few small cumulus               | 0–0.06           | 1–2     | 5–10     | 10–20 min    | Cu    |
| cumulus       | fair-weather cumulus (+ cirrus)   | 0.15–0.55        | 1–2     | 5–12     | 10–25 min    | Cu    |
| stratocumulus | extensive deck (+ cirrus)         | 0.65–0.95        | 0.6–2   | 5–12     | 1–3 h        | coast |
| cirrus        | thin high sheet (+ clear low sky) | 0.3–0.8          | 7–10    | 20–50    | 40–120 min   | none  |
| overcast      | stratus / nimbostratus            | 0.95–1           | 0.3–1.5 | 6–15     | 2–5 h        | none  |

Cumulus and stratocumulus days carry a cirrus layer above with probability CIRRUS_ABOVE (each layer its own
height and wind; cirrus winds 20–50 m/s whatever the regime). `--regime mixed` deals the five regimes in
shuffled blocks of five days (block = date ordinal // 5), so every run of ≥ 9 days (it holds a whole block)
sees each regime: equal shares by design, not a site climatology. Winds follow SAGE_DATA.md §8: 5–15 m/s at
low cloud base, 20–50 m/s at cirrus level; fair-weather regimes take the lower part of the range.

Diurnal cycles, in local mean solar time (UTC + longitude / 15 h; the node's place from the registry at 12:00 UTC
of the date), each shifted per day by `onset_h` (± ONSET_JITTER_H):
- "Cu" (the low layer of clear, cumulus and cirrus days: fair-weather cumulus) — none before CU_HOURS[0] (the
  convective boundary layer reaches condensation level in late morning), growing to the day's cover by
  CU_HOURS[1], holding through early-to-mid afternoon, dissipating to nothing by CU_HOURS[3] (ARM Southern Great
  Plains climatologies: Berg & Kassianov 2008, J. Climate; Zhang & Klein 2010, J. Atmos. Sci.).
- "coast" (stratocumulus days at a node on the US West coast, `coastal(lat, lon)`: within COAST_INLAND_DEG of
  longitude inland of the coastline COAST) — the deck is full at night and in the early morning, burns off from
  SC_HOURS[0] to an afternoon share (drawn in SC_AFTERNOON: some days clear entirely) by SC_HOURS[1], and
  re-forms from SC_HOURS[2] to full by SC_HOURS[3] (Iacobellis & Cayan 2013, J. Geophys. Res.;
  Clemesha et al. 2016, Geophys. Res. Lett.). Inland stratocumulus days have no cycle.
Hours are this module's choice within those papers' qualitative timing, not fitted numbers.

Within a day each layer wanders on its own: cover (logit ± 0.6, periods 5–31 h) and wind speed (± 15 %, periods
7–41 h) with the layer's own phases, and its wind direction veers by ± 10–30° (amplitude drawn per layer and day)
with the local inertial period 11.97 h / sin(latitude) (18 h at Chicago, 22 h at San Diego), the period at which
the boundary-layer wind turns (Blackadar 1957, Bull. Amer. Meteor. Soc. 38, 283): tens of degrees over hours.
Across local midnight every quantity is blended over ±TRANSITION_S; the cloud textures (data.synthetic.field:
one set per local date) cross-fade over ±TEXTURE_FADE_S with variance-preserving weights (`texture_days`).
`evolution=False` freezes cover (no cycle) and wind (no veering) within a day; `cloud_cover` pins the day's cover
(no cycle either: an experiment's knob). The layer displacement ∫ wind dt is integrated on a 60 s grid from the
run's start. Times are seconds since a UTC midnight (data.synthetic.generate.EPOCH_S).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

REGIMES = ("clear", "cumulus", "stratocumulus", "cirrus", "overcast")
# name: (cover range, base km range, wind m/s range, lifetime of a 1 km structure in minutes, outer scale km)
LOW = {"clear": ((0.0, 0.06), (1.0, 2.0), (5.0, 10.0), (10.0, 20.0), 1.5),
       "cumulus": ((0.15, 0.55), (1.0, 2.0), (5.0, 12.0), (10.0, 25.0), 2.0),
       "stratocumulus": ((0.65, 0.95), (0.6, 2.0), (5.0, 12.0), (60.0, 180.0), 10.0),
       "cirrus": ((0.0, 0.05), (1.0, 2.0), (5.0, 10.0), (10.0, 20.0), 1.5),
       "overcast": ((0.95, 1.0), (0.3, 1.5), (6.0, 15.0), (120.0, 300.0), 10.0)}
HIGH = ((0.3, 0.8), (7.0, 10.0), (20.0, 50.0), (40.0, 120.0), 10.0)
CIRRUS_ABOVE = 0.35
TRANSITION_S = 3 * 3600.0
TEXTURE_FADE_S = 3600.0  # shorter than TRANSITION_S: a field is sampled twice while two dates' textures mix
STEP_S = 60.0

FAIR_WEATHER = ("clear", "cumulus", "cirrus")  # their low layer is fair-weather cumulus: the Cu cycle
CU_HOURS = (10.0, 13.0, 15.0, 19.0)  # solar h: forming, at the day's cover, starting to dissipate, gone
SC_HOURS = (9.0, 13.0, 16.0, 21.0)  # solar h: burning off, at the afternoon share, re-forming, full again
SC_AFTERNOON = (0.0, 0.6)  # share of the coastal deck left in mid-afternoon
ONSET_JITTER_H = 1.0
VEER_DEG = (10.0, 30.0)
# US West coast (lat, lon), north of the Mexican border to the Canadian one, and how far inland counts as coastal
COAST = ((32.5, -117.1), (34.5, -120.6), (37.8, -122.5), (41.7, -124.2), (49.0, -124.7))
COAST_INLAND_DEG = 1.0
# (amplitude, period h) of the within-day wobbles: cover in logit units, wind speed relative
COVER_WOBBLE = ((0.3, 5.0), (0.2, 13.0), (0.1, 31.0))
SPEED_WOBBLE = ((0.05, 7.0), (0.05, 17.0), (0.05, 41.0))
LAYER_INDEX = {"low": 0, "high": 1}  # order of the layers in Weather.table and Day.veer_deg
# offsets into Day.phases per layer: cover wobble (3), speed wobble (3), veering (1)
PHASE_AT = {"low": (0, 3, 13), "high": (7, 10, 14)}


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
    phases: tuple[float, ...]  # per layer at PHASE_AT; [6] is the horizon haze's (data.synthetic.render)
    veer_deg: tuple[float, float]  # amplitude of the low / high wind direction's swing
    onset_h: float  # the day's diurnal cycle runs this many hours late (early when < 0)
    afternoon: float  # coastal stratocumulus: share of the deck left in mid-afternoon


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
    return Day(regime, low, high, float(rng.uniform(8.0, 30.0)), tuple(rng.uniform(0, 2 * math.pi, 15)),
               tuple(rng.uniform(*VEER_DEG, 2)), float(rng.uniform(-ONSET_JITTER_H, ONSET_JITTER_H)),
               float(rng.uniform(*SC_AFTERNOON)))


def coastal(lat: float, lon: float) -> bool:
    """On the US West coast: between the first and last COAST point's latitude, at most COAST_INLAND_DEG of
    longitude inland of the coastline (piecewise linear through COAST), or offshore of it."""
    lats, lons = zip(*COAST, strict=True)
    return lats[0] <= lat <= lats[-1] and lon <= float(np.interp(lat, lats, lons)) + COAST_INLAND_DEG


def _ramp(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    u = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3 - 2 * u)


def diurnal_shape(cycle: np.ndarray, solar_h: np.ndarray, afternoon: np.ndarray) -> np.ndarray:
    """Factor on the day's cover: 1 where `cycle` is 0 (none); Cu (1) 0 at night; coast (2) 1 at night."""
    a, b, c, d = CU_HOURS
    cumulus = _ramp(a, b, solar_h) * (1 - _ramp(c, d, solar_h))
    a, b, c, d = SC_HOURS
    deck = 1 - (1 - afternoon) * _ramp(a, b, solar_h) * (1 - _ramp(c, d, solar_h))
    return np.select([cycle == 1, cycle == 2], [cumulus, deck], 1.0)


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 1e-6, 1 - 1e-6)
    return np.log(c / (1 - c))


class Weather:
    """Per-day regimes over a run's local days; every quantity is a smooth function of time t (s since EPOCH).

    All of it is tabulated once on a STEP_S grid over the padded run (vectorised) and read by linear
    interpolation: `layer(name, t)`, `displacement(name, t)` (∫ wind dt since the first padded day's start) and
    `age(name, t)` (∫ dt / τ_1km: how many 1 km lifetimes have passed, drives the field's evolution).
    """

    def __init__(self, *, days: list[tuple[int, float, float]], places: list[tuple[float, float]], seed: int,
                 key: int, regime: str = "mixed", cloud_cover: float | None = None, wind_speed: float | None = None,
                 evolution: bool = True):
        """`days`: (date ordinal, start s, end s) of consecutive local days, the first and last padding the run;
        `places`: the node's (latitude, longitude) on each of them."""
        self.days = [draw_day(seed, key, o, regime=regime, cloud_cover=cloud_cover, wind_speed=wind_speed)
                     for o, _, _ in days]
        self.ordinals = [o for o, _, _ in days]
        self.bounds = np.array([days[0][1]] + [e for _, _, e in days])
        self.starts = self.bounds.tolist()  # for bisect: per-capture lookups stay scalar and cheap
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
        lat, lon = np.array(places, float).T
        base_regime = [d.regime.split("+")[0] for d in self.days]
        cycle = np.array([0 if not evolution or cloud_cover is not None
                          else 1 if r in FAIR_WEATHER else 2 if r == "stratocumulus" and coastal(la, lo) else 0
                          for r, la, lo in zip(base_regime, lat, lon, strict=True)])
        # the wind turns with the inertial period; near the equator it would grow without bound: cap at 46 h
        inertial_s = 11.97 * 3600 / np.maximum(np.sin(np.radians(np.abs(lat))), math.sin(math.radians(15.0)))

        def blend(values: np.ndarray) -> np.ndarray:
            return (1 - w) * values[i] + w * values[j]

        def own(k: np.ndarray, name: str, lay: list[Layer]):
            """Cover, u, v at every t of day k(t)'s own weather (before the midnight blend)."""
            c0 = np.array([la.cover for la in lay])[k]
            speed = np.array([math.hypot(*la.wind) for la in lay])[k]
            heading = np.array([math.atan2(*la.wind) for la in lay])[k]
            logit, rel = _logit(c0), np.ones_like(t)
            if evolution:
                at_cover, at_speed, at_veer = PHASE_AT[name]
                for m, (amp, hours) in enumerate(COVER_WOBBLE):
                    logit = logit + amp * np.sin(2 * np.pi * t / (hours * 3600) + phases[k, at_cover + m])
                for m, (amp, hours) in enumerate(SPEED_WOBBLE):
                    rel = rel + amp * np.sin(2 * np.pi * t / (hours * 3600) + phases[k, at_speed + m])
                veer = np.array([d.veer_deg[LAYER_INDEX[name]] for d in self.days])[k]
                heading = heading + np.radians(veer) * np.sin(2 * np.pi * t / inertial_s[k] + phases[k, at_veer])
            cover = 1 / (1 + np.exp(-logit))
            if name == "low":
                solar_h = (t / 3600 + lon[k] / 15 - np.array([d.onset_h for d in self.days])[k]) % 24
                cover = cover * diurnal_shape(cycle[k], solar_h, np.array([d.afternoon for d in self.days])[k])
            cover = np.where(c0 >= 1.0, 1.0, np.where(c0 <= 0.0, 0.0, cover))  # full and none stay exact
            return cover, speed * rel * np.sin(heading), speed * rel * np.cos(heading)

        def integral(rate):
            return np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * STEP_S)])

        cols = []
        for name in LAYER_INDEX:
            lay = [getattr(d, name) for d in self.days]
            (ci, ui, vi), (cj, uj, vj) = own(i, name, lay), own(j, name, lay)
            cover = np.where((ci >= 1.0) & (cj >= 1.0), 1.0, (1 - w) * ci + w * cj)
            u, v = (1 - w) * ui + w * uj, (1 - w) * vi + w * vj
            tau = np.exp(blend(np.log([la.tau_1km_s for la in lay])))
            outer = np.exp(blend(np.log([la.outer_m for la in lay])))
            base = blend(np.array([la.base_m for la in lay]))
            cols += [cover, u, v, base, tau, outer, integral(u), integral(v), integral(1 / tau)]
        cols.append(blend(np.array([d.surface_c for d in self.days])))
        self.table = np.stack(cols, axis=1)

    def _row(self, t: float) -> np.ndarray:
        pos = (t - self.t0) / STEP_S
        k = min(max(int(pos), 0), len(self.table) - 2)
        f = pos - k
        return self.table[k] * (1 - f) + self.table[k + 1] * f

    def _index(self, t: float) -> int:
        return min(max(bisect.bisect_right(self.starts, t) - 1, 0), len(self.days) - 1)

    def day(self, t: float) -> Day:
        return self.days[self._index(t)]

    def texture_days(self, t: float) -> tuple[tuple[int, float], ...]:
        """(date ordinal, weight) of the cloud textures at t: one local date, or two within ±TEXTURE_FADE_S of
        local midnight, weighted cos θ / sin θ (θ: 0 → π/2 smoothly across the window) so the mixed field keeps
        unit variance and changes continuously in time."""
        k = self._index(t)
        if k > 0 and t - self.bounds[k] < TEXTURE_FADE_S:
            k -= 1
        elif not (k < len(self.days) - 1 and self.bounds[k + 1] - t < TEXTURE_FADE_S):
            return ((self.ordinals[k], 1.0),)
        u = float(_ramp(-TEXTURE_FADE_S, TEXTURE_FADE_S, np.array(t - self.bounds[k + 1])))
        theta = u * math.pi / 2
        return (self.ordinals[k], math.cos(theta)), (self.ordinals[k + 1], math.sin(theta))

    def layer(self, name: str, t: float) -> Layer:
        """The layer at time t: day values blended across midnight, cover and wind wobbling within the day."""
        r = self._row(t)[9 * LAYER_INDEX[name]:][:6]
        return Layer(float(r[0]), float(r[3]), (float(r[1]), float(r[2])), float(r[4]), float(r[5]))

    def displacement(self, name: str, t: float) -> tuple[float, float]:
        r = self._row(t)[9 * LAYER_INDEX[name]:]
        return float(r[6]), float(r[7])

    def age(self, name: str, t: float) -> float:
        return float(self._row(t)[9 * LAYER_INDEX[name] + 8])

    def surface_celsius(self, t: float) -> float:
        return float(self._row(t)[-1])

