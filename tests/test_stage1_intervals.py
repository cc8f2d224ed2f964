"""Day-bootstrap intervals of stage-1 metrics: retrieval top-k and probe R² resample whole test days."""

import numpy as np

from sagecast_common.bootstrap import interval
from stage1_jea.baselines import retrieval
from stage1_jea.evaluate import r2, r2_interval


def _days(n_days, per_day):
    return np.repeat([f"W056/2023-06-{d + 1:02d}" for d in range(n_days)], per_day)


def test_r2_interval_equals_r2_recomputed_on_each_replicates_days():
    rng = np.random.default_rng(0)
    days = _days(6, 20)
    y = rng.normal(size=(120, 3)) + np.repeat(rng.normal(size=(6, 1)), 20, axis=0)
    pred = y + rng.normal(scale=np.repeat(rng.uniform(0.1, 1.5, 6), 20)[:, None], size=y.shape)
    n_boot = 50
    # replicate_totals' draw (seed 0): the same day indices, taken directly from the rows of those days
    draw = np.random.default_rng(0).integers(0, 6, (n_boot, 6))
    _, index = np.unique(days, return_inverse=True)
    direct = [r2(y[np.concatenate([np.flatnonzero(index == d) for d in rep])],
                 pred[np.concatenate([np.flatnonzero(index == d) for d in rep])]) for rep in draw]
    np.testing.assert_allclose(r2_interval(y, pred, days, n_boot=n_boot), interval(np.array(direct)), rtol=1e-9)


def test_r2_interval_is_a_point_for_a_perfect_probe_and_brackets_an_imperfect_one():
    rng = np.random.default_rng(1)
    days = _days(8, 15)
    y = rng.normal(size=120)
    assert r2_interval(y, y, days) == [1.0, 1.0]
    pred = y + rng.normal(scale=0.7, size=120)
    lo, hi = r2_interval(y, pred, days)
    assert lo < r2(y, pred) < hi and hi - lo > 0.01


def test_retrieval_interval_resamples_queries_by_day():
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(60, 16))
    query = keys.copy()
    query[30:] = rng.normal(size=(30, 16))  # the last three days' queries are noise: they miss
    out = retrieval(query, keys, days=_days(6, 10))
    assert out["top1"] == out["top1_ci"][0] or out["top1_ci"][0] < out["top1"] < out["top1_ci"][1]
    assert out["top1_ci"][0] < out["top1_ci"][1] <= 1.0
    perfect = retrieval(keys, keys, days=_days(6, 10))
    assert perfect["top1"] == 1.0 and perfect["top5_ci"] == [1.0, 1.0]
    assert "top1_ci" not in retrieval(keys, keys)
