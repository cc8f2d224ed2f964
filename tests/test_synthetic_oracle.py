"""The view-limited oracles of the synthetic truth and the statistics that score them.

Run: `.venv/bin/python -m pytest tests/test_synthetic_oracle.py -q`
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from data.formats import HORIZON_PRESETS, SKY_PRESETS, row_presets
from data.sky import PRESET_AZIMUTH_STEP_DEG, THERMAL_VFOV_DEG, preset_azimuth_deg, preset_elevation_deg
from data.synthetic import stats
from data.synthetic.generate import EPOCH_S, _sky, generate
from data.synthetic.layout import day_spans, node_key
from data.synthetic.oracle import (
    HALF_HFOV_DEG,
    HORIZONS_MIN,
    VIEW_LAGS_MIN,
    VIEW_SETS,
    LoopSight,
    capture_truth,
    regional_cover,
)
from data.synthetic.render import LAYERS, preset_view
from data.synthetic.site import obstructed

START = dt.date(2023, 6, 1)
KEY = node_key("W056")
NOON = day_spans("W056", START, 1)[0][1] / 1e9 - EPOCH_S + 12 * 3600  # past the midnight blends


def _loop(sky, t: float, positions) -> dict[int, dict]:
    """Truth rows of one scan loop's presets (3 s apart), as the generator computes them."""
    views = {p: preset_view(p, 384, 256, 112, 84) for p in positions}
    sight = LoopSight(sky, KEY, t, views)
    return {p: capture_truth(sky, views[p], t + 3.0 * i, seen=sight.seen[p]) for i, p in enumerate(positions)}


@pytest.mark.parametrize("regime, cover", [("cumulus", 0.4), ("cirrus", None)])
def test_view_oracles_equal_the_advection_oracle_when_the_air_is_still(regime, cover):
    """No wind: every pixel of a sky-row target at t + h is the piece its own view saw at t."""
    sky = _sky("W056", 0, str(START), 1, regime, cover, 0.0, True)
    values = []
    for t in (NOON, NOON + 3600, NOON + 7200):
        for row in _loop(sky, t, SKY_PRESETS).values():
            for h in HORIZONS_MIN:
                advect = row[f"oracle_advect_cf_{h}"]
                for name in VIEW_SETS:  # the same pixels, averaged as floats rather than booleans
                    assert row[f"oracle_{name}_cf_{h}"] == pytest.approx(advect, rel=0, abs=1e-12)
                assert row[f"seen_share_{h}"] == row[f"seen_share_horizon_{h}"] == 1.0
                values.append(advect)
    assert 0.05 < np.mean(values) < 0.95 and np.std(values) > 0.02  # real clouds, not an empty sky


def test_oracles_count_only_the_pixels_that_reach_the_sky():
    """A target whose bottom rows are hidden: every oracle and share averages over its open pixels only."""
    sky = _sky("W056", 0, str(START), 1, "cumulus", 0.4, 0.0, True)
    view = preset_view(9, 384, 256, 112, 84)
    open_ = np.ones(view.truth.ex.shape, bool)
    open_[-6:] = False
    hidden = dataclasses.replace(view, truth=dataclasses.replace(view.truth, open=open_))
    row = capture_truth(sky, hidden, NOON, seen=LoopSight(sky, KEY, NOON, {9: view}).seen[9])
    for h in HORIZONS_MIN:
        f, thr = sky.field("low", view.truth.ex, view.truth.ny, NOON, lead_s=h * 60.0)
        assert row[f"oracle_advect_cf_{h}"] == pytest.approx((f >= thr)[open_].mean(), abs=1e-12)
        assert row[f"oracle_view_cf_{h}"] == pytest.approx(row[f"oracle_advect_cf_{h}"], abs=1e-12)
    assert (f >= thr)[open_].mean() != (f >= thr).mean()  # the hidden rows change the answer (at 60 min)


def test_view_oracles_fall_back_to_the_regional_cover_when_nothing_was_seen():
    """30 m/s for an hour: both layers' pieces were 100+ km away, below every view (≤ 6° elevation)."""
    sky = _sky("W056", 0, str(START), 1, "cirrus", None, 30.0, True)
    for t in (NOON, NOON + 5400):
        rows = _loop(sky, t, SKY_PRESETS + HORIZON_PRESETS)
        expected = [regional_cover(sky, t + 3.0 * i) for i in range(len(rows))]
        got = [(r["oracle_view_cf_60"], r["oracle_view_horizon_cf_60"]) for r in rows.values()]
        # a layer under 0.1 % cover draws nothing (field.threshold): the oracle counts it as 0, the column as is
        assert np.allclose(got, np.array(expected)[:, None], rtol=0, atol=1e-3)
        assert all(r["seen_share_60"] == r["seen_share_horizon_60"] == 0.0 for r in rows.values())
        assert np.std([r["oracle_advect_cf_60"] for r in rows.values()]) > 0.05  # the advection oracle knows more


def _reference_seen(sky, t: float, position: int, rows) -> np.ndarray:
    """(layer, horizon, h, w): the visibility rule written out plainly, view by view, in degrees (float64)."""
    rays = preset_view(position, 384, 256, 112, 84).truth
    out = np.zeros((len(LAYERS), len(HORIZONS_MIN), *rays.ex.shape), bool)
    for i, layer in enumerate(LAYERS):
        lay = sky.weather.layer(layer, t)
        for j, h in enumerate(HORIZONS_MIN):
            for k in VIEW_LAGS_MIN:
                x = rays.ex - lay.wind[0] * (h + k) * 60.0 / lay.base_m
                y = rays.ny - lay.wind[1] * (h + k) * 60.0 / lay.base_m
                el = np.degrees(np.arctan2(1.0, np.hypot(x, y)))
                az = np.degrees(np.arctan2(x, y)) % 360.0
                for p in row_presets(rows):
                    d_az = (az - preset_azimuth_deg(p) + 180.0) % 360.0 - 180.0
                    box = (np.abs(el - preset_elevation_deg(p)) <= THERMAL_VFOV_DEG / 2) & (
                        np.abs(d_az) <= THERMAL_VFOV_DEG * 4 / 3 / 2)
                    out[i, j] |= box & ~obstructed(KEY, el, az)
    return out


def test_loop_sight_matches_the_plain_visibility_rule():
    assert 2 * HALF_HFOV_DEG > PRESET_AZIMUTH_STEP_DEG  # the shortcut's premise: a row's boxes overlap
    sky = _sky("W056", 0, str(START), 1, "cirrus", None, 9.0, True)
    positions = (1, 2, 17, 22)
    for t in (NOON, NOON + 4000):
        views = {p: preset_view(p, 384, 256, 112, 84) for p in positions}
        sight = LoopSight(sky, KEY, t, views)
        for p in positions:
            for name, rows in VIEW_SETS.items():
                want, got = _reference_seen(sky, t, p, rows), sight.seen[p][name]
                assert (want != got).mean() < 1e-4, (p, name)  # float32 vs float64 right at a box edge
        shares = np.array([[sight.seen[p][name].mean(axis=(2, 3)) for name in VIEW_SETS] for p in positions])
        assert ((shares > 0.05) & (shares < 0.95)).any() and (shares[:, 1] > shares[:, 0]).any()  # a real test


def test_trees_hide_the_bottom_of_a_horizon_view():
    """Still air: a horizon target sees itself, except where the site's skyline stands in front of the sky."""
    sky = _sky("W056", 0, str(START), 1, "cumulus", 0.4, 0.0, True)
    rows = _loop(sky, NOON, HORIZON_PRESETS)
    pixel = 1 / 588  # a pixel right at an edge may fall either way (float32 rays)
    for p, row in rows.items():
        rays = preset_view(p, 384, 256, 112, 84).truth
        x, y = rays.ex.astype(np.float64), rays.ny.astype(np.float64)
        el, az = np.degrees(np.arctan2(1.0, np.hypot(x, y))), np.degrees(np.arctan2(x, y)) % 360.0
        clear = ~obstructed(KEY, el, az)
        assert row["seen_share_horizon_5"] == pytest.approx(clear.mean(), abs=pixel)
        # the sky row reaches down to 32°, exactly the elevation of this target's middle pixel row
        sky_row = preset_elevation_deg(1) - THERMAL_VFOV_DEG / 2
        share = row["seen_share_5"]
        assert (clear & (el > sky_row + 1e-3)).mean() - pixel <= share <= (clear & (el > sky_row - 1e-3)).mean() + pixel
    assert min(r["seen_share_horizon_5"] for r in rows.values()) < 1.0  # W056's skyline reaches into the row


def test_day_bootstrap_resamples_whole_days():
    est, lo, hi = stats.day_bootstrap(np.array([[1.0, 2.0], [3.0, 4.0]]), lambda s: s[..., 0] / s[..., 1])
    assert est == pytest.approx(4 / 6) and 0.5 <= lo <= est <= hi <= 0.75  # a draw is days {1}, {2} or both
    same = stats.day_bootstrap(np.array([[1.0, 2.0]] * 5), lambda s: s[..., 0] / s[..., 1])
    assert same == pytest.approx((0.5, 0.5, 0.5))


def test_stats_report_oracles_diurnal_cycle_and_horizon_gain(tmp_path, capsys):
    generate(tmp_path / "raw", start=str(START), days=3, interval_min=15, fault_rate=0.0, truth_only=True,
             progress=False)
    truth = pd.read_parquet(tmp_path / "raw/W056/truth.parquet")
    for h in HORIZONS_MIN:
        assert (truth[f"seen_share_horizon_{h}"] >= truth[f"seen_share_{h}"]).all()
        assert truth[[f"oracle_view_cf_{h}", f"oracle_view_horizon_cf_{h}"]].stack().between(0, 1).all()
    assert truth.seen_share_15.mean() > truth.seen_share_60.mean()

    result = stats.main([str(tmp_path / "raw"), "--out", str(tmp_path / "stats")])
    printed = capsys.readouterr().out
    assert "no pictures (truth-only run)" in printed and result["camera_r2"] == stats.NO_PICTURES
    oracles = pd.read_csv(tmp_path / "stats/synthetic_stats_oracles.csv")
    assert set(oracles.oracle) == {"advect", "view", "view_horizon"} and set(oracles.horizon_min) == {15, 30, 60}
    assert "all" in set(oracles.group) and set(oracles.row) == {"sky"}
    for kind in ("mae", "mse"):
        assert (oracles[f"{kind}_skill_lo"] <= oracles[f"{kind}_skill"] + 1e-4).all()
        assert (oracles[f"{kind}_skill"] <= oracles[f"{kind}_skill_hi"] + 1e-4).all()
    seen = oracles[oracles.group == "all"].pivot(index="horizon_min", columns="oracle", values="seen_share")
    assert (seen.view_horizon >= seen.view).all() and seen.advect.isna().all()
    diurnal = pd.read_csv(tmp_path / "stats/synthetic_stats_diurnal.csv")
    assert list(diurnal.columns[2:]) == [f"{2 * b:02d}-{2 * b + 2:02d}" for b in range(12)]
    assert diurnal.set_index("regime").loc["all", "days"] == 3 and diurnal.iloc[:, 2:].notna().all().all()
    [gain] = result["view_horizon_gain_15"]
    assert gain["row"] == "sky" and gain["lo"] <= gain["mae_difference"] <= gain["hi"]
    saved = json.loads((tmp_path / "stats/synthetic_stats.json").read_text())
    assert saved["view_horizon_gain_15"] == [gain] and len(saved["oracles"]) == len(oracles)


def test_camera_r2_fits_on_some_days_and_scores_on_others(tiny_raw):
    truth, _ = stats.load(tiny_raw)
    result = stats.camera_r2(tiny_raw, truth)
    assert result["fit_days"] == 2 and result["score_days"] == 1 and result["captures"] == truth.is_day.sum()
    assert -1.0 < result["r2"] <= 1.0
    one_day = truth[truth.day == truth.day.min()]
    assert stats.camera_r2(tiny_raw, one_day).startswith("too few days")
