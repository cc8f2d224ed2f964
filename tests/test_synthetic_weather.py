"""The synthetic sky's weather: regimes per day, cloud spectrum, oracles, forecastability, auto-exposure, stats.

Run: `.venv/bin/python -m pytest tests/test_synthetic_weather.py -q`
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from data.synthetic import stats
from data.synthetic.camera import EXPOSURE_TARGET, expose, exposure_gain
from data.synthetic.field import sample_layer
from data.synthetic.generate import EPOCH_S, _sky, generate
from data.synthetic.layout import day_spans
from data.synthetic.oracle import HORIZONS_MIN
from data.synthetic.render import preset_view, render, true_cloud
from data.synthetic.weather import REGIMES, draw_day

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
    for d in days:
        speed = np.hypot(*d.low.wind)
        assert 2.0 <= speed <= 15.0 and 300 <= d.low.base_m <= 2000 and 7000 <= d.high.base_m <= 10000
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
    f = sample_layer(0, 1, 0, ex.astype(np.float32), ny.astype(np.float32), base_m=1000.0, shift=(0.0, 0.0),
                     age=0.4, outer_m=1e9)
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
