"""Headroom captured (stage2_forecast.headroom): exact shares on hand-made forecasts, baseline choice, probe."""

import numpy as np
import pytest

from stage2_forecast.headroom import apply_probe, fit_truth_probe, headroom_block, preset_mean

N, H, P, DAYS = 40, 2, 8, 8


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (N, H, P))
    err = rng.choice([-1, 1], (N, H, P)) * rng.uniform(0.05, 0.2, (N, H, P))
    return truth, err, np.ones((N, H, P), bool), np.repeat(np.arange(DAYS), N // DAYS)


def test_oracle_baseline_and_halfway_model_capture_one_zero_and_a_half(world):
    truth, err, mask, day = world
    oracle = truth + 0.2 * err  # the oracle errs too, less
    models = {"oracle_like": [oracle.copy()], "baseline_like": [truth + err], "halfway": [truth + 0.6 * err]}
    out = headroom_block(models, {"ridge": truth + err}, oracle, truth, mask, day, DAYS, ["5", "15"], n_boot=200)
    for hk in ("5", "15"):
        assert out["models"]["oracle_like"][hk]["headroom"] == pytest.approx(1.0)
        assert out["models"]["baseline_like"][hk]["headroom"] == pytest.approx(0.0)
        row = out["models"]["halfway"][hk]
        assert row["headroom"] == pytest.approx(0.5) and row["baseline"] == "ridge"
        np.testing.assert_allclose(row["headroom_ci"], [0.5, 0.5])  # the same share on every day
        assert row["mae_oracle"] < row["mae_model"] < row["mae_baseline"]


def test_strongest_baseline_is_the_reference_and_intervals_cover_seeds_and_days(world):
    truth, err, mask, day = world
    rng = np.random.default_rng(1)
    oracle = truth.copy()
    seeds = [truth + err * rng.uniform(0.2, 0.9, (N, H, P)) for _ in range(2)]
    out = headroom_block({"detr": seeds}, {"weak": truth + 2 * err, "ridge": truth + err}, oracle, truth, mask, day,
                         DAYS, ["5", "15"], n_boot=300)
    row = out["models"]["detr"]["5"]
    assert row["baseline"] == "ridge" and set(row["mae_baselines"]) == {"weak", "ridge"}
    assert row["mae_baseline"] == row["mae_baselines"]["ridge"] < row["mae_baselines"]["weak"]
    lo, hi = row["headroom_ci"]
    assert 0 < lo < row["headroom"] < hi < 1


def test_no_headroom_when_the_oracle_is_no_better_and_masked_slots_do_not_count(world):
    truth, err, mask, day = world
    worse = headroom_block({"m": [truth + err]}, {"ridge": truth + 0.5 * err}, truth + err, truth, mask, day, DAYS,
                           ["5", "15"], n_boot=50)
    assert worse["models"]["m"]["5"]["headroom"] is None and "no headroom" in worse["models"]["m"]["5"]["why"]
    holes = truth.copy()
    holes[:, :, 0] = np.nan  # no truth for one preset: those slots drop out for every method alike
    out = headroom_block({"m": [truth + 0.6 * err]}, {"ridge": truth + err}, truth, holes, mask, day, DAYS,
                         ["5", "15"], n_boot=50)
    assert out["models"]["m"]["5"]["n"] == N * (P - 1)


def test_the_preset_mean_is_every_views_mean_of_the_views_there_at_t():
    now = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # (N, P, D)
    present = np.array([[True, True, True], [True, False, True]])
    out = preset_mean(now, present)
    assert out.shape == (2, 1, 3, 2)
    np.testing.assert_allclose(out[0, 0], np.broadcast_to(now[0].mean(0), (3, 2)))
    np.testing.assert_allclose(out[1, 0], np.broadcast_to((now[1, 0] + now[1, 2]) / 2, (3, 2)))  # view 1 missing


def test_truth_probe_recovers_a_linear_map_and_stays_a_fraction():
    rng = np.random.default_rng(2)
    w = rng.normal(size=6)
    z = rng.normal(size=(500, 6))
    cf = np.clip(0.5 + 0.05 * z @ w, 0, 1)
    probe = fit_truth_probe(z[:400], cf[:400], z[400:], cf[400:])
    np.testing.assert_allclose(apply_probe(probe, z[400:]), cf[400:], atol=0.02)
    assert apply_probe(probe, 100 * z).min() >= 0 and apply_probe(probe, 100 * z).max() <= 1
    with pytest.raises(ValueError, match="too few"):
        fit_truth_probe(z[:1], cf[:1], z[1:2], np.array([np.nan]))


def test_reports_show_the_share_with_its_interval_or_say_why_there_is_none(world):
    from sagecast_report.build import headroom_html
    from stage2_forecast.report_md import headroom_lines

    truth, err, mask, day = world
    block = headroom_block({"detr": [truth + 0.6 * err]}, {"ridge": truth + err}, truth + 0.2 * err, truth, mask, day,
                           DAYS, ["5", "15"], n_boot=50)
    block.update(available=True, oracle="oracle_view_cf_<h>")
    md = "\n".join(headroom_lines(block))
    assert "| detr | 5 | +0.50 [+0.50, +0.50] | ridge |" in md
    assert "+0.50 [0.500, 0.500]" in headroom_html(block) and "oracle_view_cf_&lt;h&gt;" in headroom_html(block)
    why = {"available": False, "why": "needs data.synthetic truth: not available on real data"}
    assert headroom_lines(why) == ["Not available: needs data.synthetic truth: not available on real data."]
    assert "not available on real data" in headroom_html(why) and "<table" not in headroom_html(why)
