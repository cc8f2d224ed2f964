"""The synthetic sky's weather: regimes per day, cloud spectrum, oracles, forecastability, auto-exposure, stats;
independent days, diurnal cycles, independent layers, veering winds, the cloud-motion estimate.

Run: `.venv/bin/python -m pytest tests/test_synthetic_weather.py -q`
"""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from data.sage.registry import node_location
from data.synthetic import field, stats
from data.synthetic.camera import EXPOSURE_TARGET, expose, exposure_gain
from data.synthetic.field import band_textures, sample_layer
from data.synthetic.generate import EPOCH_S, _sky, generate
from data.synthetic.layout import day_spans
from data.synthetic.oracle import HORIZONS_MIN, MOTION_NOISE_MS, MOTION_SCALE_SD, TRACKABLE_COVER, cloud_motion
from data.synthetic.render import preset_view, render, true_cloud
from data.synthetic.weather import LOW, REGIMES, TEXTURE_FADE_S, VEER_DEG, coastal, draw_day

START = dt.date(2023, 6, 1)


def test_regime_draw_is_deterministic_and_covers_every_regime():
    first = START.toordinal() // 5 * 5  # 60 days = 12 whole blocks
    days = [draw_day(3, 77, first + i) for i in range(60)]
    again = [draw_day(3, 77, first + i) for i in range(60)]
    other = [draw_day(4, 77, first + i) for i in range(60)]
    assert days == again and days != other
    base = [d.regime.split("+")[0] for d in days]
    assert {b: base.count(b) for b in REGIMES} == dict.fromkeys(REGIMES, 12)  # dealt in blocks of five
    assert any(d.regime.endswith("+cirrus") for d in days)
    for d in days:  # winds as SAGE_DATA.md §8 has them: 5–15 m/s at low cloud base, 20–50 m/s at cirrus level
        (w0, w1), high = LOW[d.regime.split("+")[0]][2], np.hypot(*d.high.wind)
        assert w0 <= np.hypot(*d.low.wind) <= w1 and 5.0 <= w0 and w1 <= 15.0 and 20.0 <= high <= 50.0
        assert 300 <= d.low.base_m <= 2000 and 7000 <= d.high.base_m <= 10000
        assert (d.high.cover > 0) == (d.regime == "cirrus" or d.regime.endswith("+cirrus"))
    pinned = draw_day(3, 77, START.toordinal(), regime="overcast", cloud_cover=0.3, wind_speed=5.0)
    assert pinned.regime == "overcast" and pinned.low.cover == 0.3 and pinned.high.cover == 0.0
    assert np.isclose(np.hypot(*pinned.low.wind), 5.0)


def test_thirty_days_hold_clear_overcast_and_broken_days():
    """Daytime (08–18 h local) mean regional cover per day; each class ≥ 15 % of 30 days, any seed."""
    for seed in (0, 1, 2):
        sky = _sky("W056", seed, str(START), 30, "mixed", None, None, True)
        classes = []
        for _, a, _ in day_spans("W056", START, 30):
            t = [a / 1e9 - EPOCH_S + h * 3600 for h in range(8, 19)]
            cover = np.mean([1 - np.prod([1 - sky.weather.layer(k, s).cover for k in ("low", "high")]) for s in t])
            classes.append("clear" if cover < 0.15 else "overcast" if cover > 0.85 else "broken")
        shares = {c: classes.count(c) / 30 for c in ("clear", "broken", "overcast")}
        assert min(shares.values()) >= 0.15, (seed, shares)


def test_field_spectrum_follows_the_k_minus_five_thirds_law():
    """Radially averaged 2-D power of a sampled field ∝ k^-8/3 (1-D energy spectrum k^-5/3), 0.25–4 km."""
    n, step = 512, 25.0
    axis = (np.arange(n) - n / 2) * step / 1000.0  # ground metres per metre of height at base_m = 1000
    ex, ny = np.meshgrid(axis, axis)
    f = sample_layer(0, 1, 0, START.toordinal(), ex.astype(np.float32), ny.astype(np.float32), base_m=1000.0,
                     shift=(0.0, 0.0), age=0.4, outer_m=1e9)
    assert abs(f.std() - 1) < 0.2
    win = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    power = np.abs(np.fft.fft2((f - f.mean()) * win)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n, step), np.fft.fftfreq(n, step)))
    edges = np.geomspace(1 / 4000, 1 / 250, 13)
    idx = np.digitize(k.ravel(), edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    mean = np.array([power.ravel()[idx == i].mean() for i in range(1, len(edges))])
    slope = np.polyfit(np.log(centres), np.log(mean), 1)[0]
    assert abs(slope - (-8 / 3)) < 0.3, slope


def test_advection_oracle_equals_truth_when_the_field_is_frozen(tmp_path):
    generate(tmp_path, start=str(START), days=1, hours=5, interval_min=5, regime="stratocumulus", cloud_cover=0.5,
             wind_speed=8.0, evolution=False, jitter_deg=0.0, truth_only=True, progress=False)
    truth = pd.read_parquet(tmp_path / "W056/truth.parquet")
    assert truth.regime.eq("stratocumulus").all() and set(truth.loop_num) == set(range(1, 61))
    now = truth[truth.loop_num.between(37, 48)]  # past the midnight blend (3 h), targets within the run
    later = truth.set_index(["loop_num", "position"]).cloud_fraction
    sky = _sky("W056", 0, str(START), 1, "stratocumulus", 0.5, 8.0, False)
    for h in HORIZONS_MIN:
        for r in now.iloc[::7].itertuples():  # exactly the truth at t + h
            future = true_cloud(sky, preset_view(r.position, 384, 256, 112, 84).truth, r.ts_ns / 1e9 - EPOCH_S + h * 60)
            assert abs(getattr(r, f"oracle_advect_cf_{h}") - future["total"]) < 1e-3, (h, r)
        # the capture h later: up to ~1.5 s of scan timing apart (≈ 12 m of drift at 8 m/s)
        target = later.loc[list(zip(now.loop_num + h // 5, now.position, strict=True))].to_numpy()
        assert np.abs(now[f"oracle_advect_cf_{h}"] - target).max() < 0.03, h
        assert np.allclose(now[f"oracle_cover_cf_{h}"], 0.5)
    assert now.cloud_fraction.std() > 0.1 and np.abs(np.diff(now.cloud_fraction)).mean() > 0.02


def _acf_5(out, wind: float) -> float:
    generate(out, start=str(START), days=1, interval_min=5, regime="cumulus", cloud_cover=0.4, wind_speed=wind,
             fault_rate=0.0, truth_only=True, progress=False)
    truth, interval = stats.load(out)
    return float(stats.group_table(truth, stats.day_table(truth), interval).set_index("group").loc["cumulus", "acf_5"])


def test_autocorrelation_rises_as_wind_falls(tmp_path):
    slow, fast = _acf_5(tmp_path / "slow", 2.0), _acf_5(tmp_path / "fast", 12.0)
    assert slow > fast + 0.2 and slow > 0.4, (slow, fast)


def test_auto_exposure_keeps_pixels_in_range():
    view = preset_view(9, 384, 256, 112, 84)
    rng = np.random.default_rng(0)
    noise = np.zeros((256, 384, 3), np.int16)
    means = []
    for cover in (0.0, 0.5, 1.0):
        sky = _sky("W056", 0, str(START), 1, "cumulus", cover, 5.0, True)
        t = day_spans("W056", START, 1)[0][1] / 1e9 - EPOCH_S + 13 * 3600
        _, colours = render(sky, view, t, 112, 84, sun_el=60.0, sun_az=180.0, rng=rng)
        pixels = expose(colours, 384, 256, noise)
        assert pixels.dtype == np.uint8 and (pixels == 255).mean() < 0.02 and (pixels == 0).mean() < 0.02
        means.append(pixels.mean() / 255)
    assert all(abs(m - EXPOSURE_TARGET) < 0.12 for m in means), means  # overcast is not simply brighter
    assert exposure_gain(np.full((4, 4, 3), 0.01, np.float32)) == 3.0  # night: the gain runs out
    assert np.isclose(exposure_gain(np.full((4, 4, 3), 0.84, np.float32)), EXPOSURE_TARGET / 0.84)


def test_stats_cli_writes_tables(tmp_path, capsys):
    generate(tmp_path / "raw", start=str(START), days=2, interval_min=15, fault_rate=0.0, truth_only=True,
             progress=False)
    result = stats.main([str(tmp_path / "raw"), "--out", str(tmp_path / "stats")])
    assert "share of days" in capsys.readouterr().out
    days = pd.read_csv(tmp_path / "stats/synthetic_stats_days.csv")
    assert list(days.day) == ["2023-06-01", "2023-06-02"] and set(days.regime) <= {
        *REGIMES, "cumulus+cirrus", "stratocumulus+cirrus"}
    groups = pd.read_csv(tmp_path / "stats/synthetic_stats_groups.csv")
    assert {"acf_15", "advect_skill_15", "cover_skill_60"} <= set(groups.columns) and "acf_5" not in groups
    assert json.loads((tmp_path / "stats/synthetic_stats.json").read_text())["interval_min"] == result["interval_min"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        stats.main([str(tmp_path / "empty")])
    assert err.value.code == 2 and "no synthetic node folders" in capsys.readouterr().err


CHICAGO, SAN_DIEGO = "2023-04-01", "2023-06-01"  # W056 before and after its move (2023-05-20)


def _series(start: str, days: int, regime: str, *, cloud_cover=None, step_s: float = 600.0):
    """(sky, times s since EPOCH, local mean solar hour) over `days` local days of W056 from `start`."""
    sky = _sky("W056", 0, start, days, regime, cloud_cover, None, True)
    lon = node_location("W056", pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=12))[1]
    first = day_spans("W056", dt.date.fromisoformat(start), days)[0][1] / 1e9 - EPOCH_S
    t = first + np.arange(0.0, days * 86400.0, step_s)
    return sky, t, (t / 3600 + lon / 15) % 24


def _between(values: np.ndarray, solar: np.ndarray, lo: float, hi: float) -> float:
    """Mean of `values` over the times whose local solar hour is in [lo, hi)."""
    return float(values[(solar >= lo) & (solar < hi)].mean())


def _logit(cover: np.ndarray) -> np.ndarray:
    return np.log(cover / (1 - cover))


def test_every_local_date_has_its_own_clouds():
    """Train, val and test days (different dates) share no texture: not at the same rays, not shifted either."""
    dates = [(START + dt.timedelta(days=k)).toordinal() for k in (0, 40, 80)]
    axis = np.linspace(-10, 10, 96, dtype=np.float32)  # ±10 km at a 1 km base: many 2 km cells
    ex, ny = np.meshgrid(axis, axis)
    kw = dict(base_m=1000.0, shift=(300.0, -200.0), age=0.4, outer_m=2000.0)
    fields = [sample_layer(0, 1, 0, d, ex, ny, **kw) for d in dates]
    assert np.array_equal(fields[0], sample_layer(0, 1, 0, dates[0], ex, ny, **kw))  # the same date reproduces
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert abs(np.corrcoef(fields[a].ravel(), fields[b].ravel())[0, 1]) < 0.1
    for b in range(3):  # a rolled copy of one field would correlate 1 at some circular shift; here none does
        for x in band_textures(0, 1, 0, dates[0])[b]:
            for y in band_textures(0, 1, 0, dates[1])[b]:
                shifted = np.fft.ifft2(np.fft.fft2(x) * np.conj(np.fft.fft2(y))).real / x.size
                assert np.abs(shifted).max() < 0.35, b


def test_textures_cross_fade_continuously_across_local_midnight():
    sky, _, _ = _series(SAN_DIEGO, 2, "stratocumulus")
    w = sky.weather
    midnight = day_spans("W056", dt.date.fromisoformat(SAN_DIEGO), 2)[1][1] / 1e9 - EPOCH_S
    t = midnight + np.arange(-TEXTURE_FADE_S - 600, TEXTURE_FADE_S + 600, 30.0)
    mixes = [dict(w.texture_days(s)) for s in t]
    before, after = (dt.date.fromisoformat(SAN_DIEGO) + dt.timedelta(days=k) for k in (0, 1))
    assert mixes[0] == {before.toordinal(): 1.0} and mixes[-1] == {after.toordinal(): 1.0}
    weights = np.array([[m.get(before.toordinal(), 0.0), m.get(after.toordinal(), 0.0)] for m in mixes])
    assert np.allclose((weights**2).sum(1), 1.0)  # variance-preserving: the mixed field keeps unit variance
    assert np.abs(np.diff(weights, axis=0)).max() < 0.03  # no jump anywhere in the window
    axis = np.linspace(-3, 3, 64, dtype=np.float32)
    ex, ny = np.meshgrid(axis, axis)

    def change(s):  # how much the field moves in 2 s (it drifts with the wind and evolves at any time)
        f0, f1 = (sky.field("low", ex, ny, s + d)[0] for d in (-1.0, 1.0))
        return np.abs(f1 - f0).mean(), f0.std()

    (at_midnight, std), (at_dawn, _) = change(midnight), change(midnight + 6 * 3600)
    assert 0.8 < std < 1.2 and at_midnight < 1.5 * at_dawn, (std, at_midnight, at_dawn)


def test_fair_weather_cumulus_peak_in_the_afternoon_and_are_gone_by_evening():
    for start in (CHICAGO, SAN_DIEGO):
        sky, t, solar = _series(start, 8, "cumulus")
        cover = np.array([sky.weather.layer("low", s).cover for s in t])
        noon, morning, evening = (_between(cover, solar, *h) for h in ((13, 15), (8, 9), (19, 20)))
        assert noon > 0.15 and noon > 3 * morning and noon > 3 * evening, (start, noon, morning, evening)
        assert _between(cover, solar, 0, 6) == 0.0  # no convection at night: no fair-weather cumulus


def test_coastal_stratocumulus_burns_off_and_inland_decks_do_not():
    assert coastal(32.7, -117.2) and coastal(37.8, -122.4)  # San Diego, San Francisco
    assert not coastal(41.7, -87.99) and not coastal(38.6, -121.5) and not coastal(39.5, -119.8)  # Sacramento, Reno
    changes = {}
    for start in (CHICAGO, SAN_DIEGO):
        sky, t, solar = _series(start, 8, "stratocumulus")
        cover = np.array([sky.weather.layer("low", s).cover for s in t])
        changes[start] = _between(cover, solar, 5, 8) - _between(cover, solar, 13, 16)
    assert changes[SAN_DIEGO] > 0.25 and abs(changes[CHICAGO]) < 0.1, changes
    sky, t, _ = _series(SAN_DIEGO, 3, "stratocumulus", cloud_cover=0.5)  # a pinned cover has no cycle
    assert np.allclose([sky.weather.layer("low", s).cover for s in t[50:200]], 0.5, atol=0.2)


def test_layers_wander_independently():
    sky, t, _ = _series(CHICAGO, 20, "stratocumulus")
    hours = (t - t[0]) / 3600
    days = [k for k in range(20) if sky.weather.days[k + 1].high.cover > 0]  # days[0] pads the run
    assert len(days) >= 3
    for k in days:
        inside = (hours >= 24 * k + 4) & (hours < 24 * k + 20)  # away from the midnight blends
        low, high = ([sky.weather.layer(n, s) for s in t[inside]] for n in ("low", "high"))
        gap = _logit(np.array([la.cover for la in low])) - _logit(np.array([la.cover for la in high]))
        assert gap.std() > 0.05  # one shared swing would keep the gap constant within the day
        pairs = list(zip(low, high, strict=True))
        ratio = np.array([np.hypot(*a.wind) / np.hypot(*b.wind) for a, b in pairs])
        assert ratio.std() / ratio.mean() > 0.01  # one shared wind wobble would keep the ratio constant
        turn = np.degrees(np.unwrap([math.atan2(*a.wind) - math.atan2(*b.wind) for a, b in pairs]))
        assert np.ptp(turn) > 2.0  # each layer veers on its own


def test_wind_veers_slowly_within_a_day():
    sky, t, _ = _series(CHICAGO, 10, "mixed", step_s=300.0)
    hours = (t - t[0]) / 3600
    ranges = []
    for k in range(10):
        inside = (hours >= 24 * k + 4) & (hours < 24 * k + 20)
        day = sky.weather.days[k + 1]
        for name in ("low", "high"):
            heading = np.degrees(np.unwrap([math.atan2(*sky.weather.layer(name, s).wind) for s in t[inside]]))
            drawn = math.degrees(math.atan2(*getattr(day, name).wind))
            offset = (heading - drawn + 180) % 360 - 180
            assert np.abs(offset).max() <= VEER_DEG[1] + 0.5  # bounded: at most the drawn amplitude
            assert np.abs(np.diff(heading)).max() / (5 / 60) < 16.0  # slow: under 16° per hour
            ranges.append(np.ptp(offset))
    assert np.mean(ranges) > 15.0 and min(ranges) > 3.0  # tens of degrees over the day


def test_cloud_motion_is_the_low_wind_plus_the_stated_noise():
    sky, _, _ = _series(SAN_DIEGO, 1, "stratocumulus", cloud_cover=0.5)
    t = day_spans("W056", dt.date.fromisoformat(SAN_DIEGO), 1)[0][1] / 1e9 - EPOCH_S + 12 * 3600
    (u, v), loops = sky.weather.layer("low", t).wind, range(1_000_000, 1_004_000, 1)
    est = np.array([[m["motion_u"], m["motion_v"]] for m in (cloud_motion(sky, t, s) for s in loops)])
    assert cloud_motion(sky, t, loops[0]) == cloud_motion(sky, t, loops[0])  # its own seeded stream
    speed, along = math.hypot(u, v), np.array([u, v]) / math.hypot(u, v)
    err = est - [u, v]
    para, cross = err @ along, err @ [along[1], -along[0]]
    assert abs(para.mean()) < 0.1 and abs(cross.mean()) < 0.1
    assert np.isclose(cross.std(), MOTION_NOISE_MS, rtol=0.05)
    assert np.isclose(para.std(), math.hypot(MOTION_NOISE_MS, MOTION_SCALE_SD * speed), rtol=0.05)


def test_motion_columns_one_estimate_per_loop_nan_without_low_cloud(tmp_path):
    generate(tmp_path, start=SAN_DIEGO, days=1, interval_min=20, regime="cumulus", fault_rate=0.0,
             truth_only=True, progress=False)
    truth = pd.read_parquet(tmp_path / "W056/truth.parquet")
    per_loop = truth.groupby("loop_num")
    assert (per_loop.motion_u.nunique(dropna=False) == 1).all() and (per_loop.motion_v.nunique(dropna=False) == 1).all()
    first = per_loop.first()
    tracked = first.low_cover >= TRACKABLE_COVER
    assert first.motion_u.isna().any() and tracked.any()  # cumulus days: nothing to track at night
    assert (first.motion_u.notna() == tracked).all()
    err = np.hypot(first.motion_u - first.wind_u, first.motion_v - first.wind_v)[tracked]
    assert 0.3 < err.mean() < 4.0  # an estimate, neither exact nor wild


def test_a_dates_textures_are_computed_once_per_process(tmp_path, monkeypatch):
    computed = []

    def counting(*key):
        computed.append(key)
        return raw(*key)

    raw = field.band_textures.__wrapped__
    monkeypatch.setattr(field, "band_textures", lru_cache(maxsize=field.band_textures.cache_info().maxsize)(counting))
    field._window.cache_clear()
    generate(tmp_path, start=SAN_DIEGO, days=3, interval_min=60, regime="stratocumulus", fault_rate=0.0,
             truth_only=True, progress=False)
    assert len({k[3] for k in computed}) == 5  # the 3 days and, across the midnights, their neighbours
    assert len(computed) == len(set(computed))
    field._window.cache_clear()  # its windows came from the counting copy
