"""Stage-2 baselines on hand-made series (exact numbers), daylight anchors, and bootstrap interval coverage."""

import numpy as np
import pandas as pd
import pytest

from sagecast_common import bootstrap
from stage2_forecast import baselines, samples


def series_table(z, solar_hour, *, is_day=None, split="train"):
    """One node, one preset, one dimension: scans 5 min apart with values z at the given solar hours."""
    n = len(z)
    is_day = np.ones(n, bool) if is_day is None else np.asarray(is_day)
    pad = lambda a, fill: np.concatenate([a, np.full((1,) + a.shape[1:], fill, a.dtype)])  # noqa: E731
    t = pd.Timestamp("2023-06-03 16:00", tz="UTC").value + np.arange(n) * 300 * 10**9
    v = np.asarray(z, np.float32).reshape(n, 1, 1)
    return samples.ScanTable(
        vsn=pad(np.array(["W056"] * n, object), ""), time_ns=pad(t, 0), day=pad(np.full(n, 7), -1),
        split=pad(np.array([split] * n, object), ""), sun_elev=pad(np.full(n, 40, np.float32), 0),
        solar_hour=pad(np.asarray(solar_hour, np.float32), 0), location=pad(np.array(["0,0"] * n, object), ""),
        present=pad(np.ones((n, 1), bool), False), is_day=pad(is_day[:, None], False), emb=pad(v, 0),
        rows=pad(np.zeros((n, 1), np.int64), -1), cloud=pad(np.zeros((n, 1), np.float32), np.nan),
        prepared_dir="", z=pad(v, 0))


def test_smart_persistence_and_damped_anomaly_on_a_hand_made_series():
    # Solar hours 9:50, 9:55 (bin 9) and 10:00, 10:05 (bin 10): climatology 2 and 8.
    table = series_table([1.0, 3.0, 6.0, 10.0], [9 + 50 / 60, 9 + 55 / 60, 10.0, 10 + 5 / 60])
    clim = baselines.fit_climatology(table)
    assert clim[0, 9, 0] == 2.0 and clim[0, 10, 0] == 8.0
    win = samples.build_windows(table, horizons_min=(5.0,), context_scans=1, step_min=5.0, split="train")
    assert list(win.anchor) == [0, 1, 2]  # the last scan has no target
    b = samples.gather(table, win, np.arange(3), clim=clim)
    # anomalies now x = [1-2, 3-2, 6-8] = [-1, 1, -2]; at the target y = [3-2, 6-8, 10-8] = [1, -2, 2]
    damping = baselines.fit_damping(b)
    assert damping[0, 0] == pytest.approx(-7 / 6)  # Σxy / Σx² = (-1 - 2 - 4) / (1 + 1 + 4)
    preds, fitted = baselines.forecasts(b, b)
    flat = {k: v[:, 0, 0, 0] for k, v in preds.items()}
    np.testing.assert_allclose(flat["persistence"], [1, 3, 6])
    np.testing.assert_allclose(flat["smart_persistence"], [2 - 1, 8 + 1, 8 - 2])
    np.testing.assert_allclose(flat["damped_anomaly"], [2 + 7 / 6, 8 - 7 / 6, 8 + 7 / 3], rtol=1e-6)
    np.testing.assert_allclose(flat["climatology"], [2, 8, 8])


def test_damping_is_cross_fitted_by_day_by_hand():
    # Two days with scans at solar 9:50, 9:55 (bin 9), 10:00, 10:05 (bin 10).
    hours = [9 + 50 / 60, 9 + 55 / 60, 10.0, 10 + 5 / 60] * 2
    table = series_table([1.0, 3.0, 6.0, 10.0, 3.0, 5.0, 4.0, 2.0], hours)
    table.day[:8] = [1, 1, 1, 1, 2, 2, 2, 2]
    table.time_ns[4:8] += 86_400 * 10**9
    win = samples.build_windows(table, horizons_min=(5.0,), context_scans=1, step_min=5.0, split="train")
    assert list(win.anchor) == [0, 1, 2, 4, 5, 6]
    # day 1 against day 2's climatology (bin 9: 4, bin 10: 3): x = [-3, -1, 3], y = [-1, 3, 7] -> Σxy 21, Σx² 19
    # day 2 against day 1's (bin 9: 2, bin 10: 8):             x = [1, 3, -4],  y = [3, -4, -6] -> Σxy 15, Σx² 26
    assert baselines.fit_damping_by_day(table, win)[0, 0] == pytest.approx(36 / 45)
    # in-sample (both days' climatology: bin 9: 3, bin 10: 5.5) the anomalies look short-lived: Σxy 4.5, Σx² 10.5
    in_sample = samples.gather(table, win, np.arange(len(win)), clim=baselines.fit_climatology(table))
    assert baselines.fit_damping(in_sample)[0, 0] == pytest.approx(4.5 / 10.5)


def test_no_night_anchors_by_default():
    # Scans 0-3 are night captures (before sunrise); their 5-60 min targets are daytime.
    table = series_table(np.arange(20.0), np.full(20, 6.0), is_day=np.arange(20) >= 4)
    kw = dict(horizons_min=(5.0, 15.0), context_scans=1, step_min=5.0)
    default = samples.build_windows(table, **kw)
    assert default.anchor.min() == 4 and table.is_day[default.anchor].all()
    with_night = samples.build_windows(table, day_anchors=False, **kw)
    # Scan 0's targets (scans 1 and 3) are night too, so it is never a sample; scans 1-3 reach daytime targets.
    assert set(with_night.anchor) - set(default.anchor) == {1, 2, 3}


def test_bootstrap_interval_covers_the_true_skill_about_95_percent():
    # Per day: persistence error ~ Gamma, model error = persistence error × u, u ~ U(0.2, 0.8) independent,
    # so the true skill 1 - E[err]/E[per] is 0.5 exactly. 200 replications of a 25-day test set.
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        per = rng.gamma(4.0, 1.0, size=(1, 25, 1))
        err = per * rng.uniform(0.2, 0.8, size=per.shape)
        point, reps = bootstrap.replicate_totals({"per": per, "model": err}, n_boot=400, seed=int(rng.integers(1e9)))
        lo, hi = bootstrap.interval(1 - reps["model"] / reps["per"])[:, 0]
        hits += lo <= 0.5 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # 95 % nominal; percentile intervals run slightly short at n = 25


def test_bootstrap_resamples_seeds_and_pairs_days():
    sums = {"a": np.array([[[1.0], [2.0]], [[3.0], [4.0]]]), "b": np.array([[[1.0], [2.0]]])}
    point, reps = bootstrap.replicate_totals(sums, n_boot=50)
    assert point["a"][0] == 5.0 and point["b"][0] == 3.0  # sum over days of the seed-mean
    # Same day draws for a and b: a − b per replicate is 2 × (number of draws) ± the seed draw, never below 0.
    assert (reps["a"] >= reps["b"]).all() and reps["a"].std() > 0
    assert bootstrap.distinguishable([0.1, 0.2]) and not bootstrap.distinguishable([-0.1, 0.2])


def test_ridge_start_is_cross_fitted_by_day_by_hand():
    # Three train days and a val day of 6 scans; one preset, one dimension, no means, so the per-view ridge's
    # columns are the last scan three times (the view and its two "neighbours", itself on a ring of one), and
    # the centred ridge is a slope: Σxc·yc / (Σxc² (1 + alpha/n)) (the penalty is alpha × mean squared row norm,
    # which grows with the copies as the fit's Σ does, so the copies change nothing).
    z = np.random.default_rng(0).normal(size=24)
    # One solar hour for every scan: the ridge's clock columns are then constant, so centring removes them.
    table = series_table(z, [9.0] * 24)
    table.day[:24] = np.repeat([1, 2, 3, 4], 6)
    table.time_ns[:24] += np.repeat(np.arange(4), 6) * 86_400 * 10**9
    table.split[:24] = np.repeat(["train", "train", "train", "val"], 6)
    kw = dict(horizons_min=(5.0,), context_scans=1, step_min=5.0)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val")}
    starts, alphas = baselines.ridge_start(table, wins, means_min=())
    alpha, (train, val) = alphas[0], (wins[s] for s in ("train", "val"))
    x = table.z[train.anchor, 0, 0].astype(np.float64)
    y = table.z[train.tgt[:, 0], 0, 0] - x
    days = table.day[train.anchor]
    assert len(train) == 15 and starts["train"].shape == (15, 1, 1, 1)
    for d in (1, 2, 3):  # each day's start comes from a ridge fitted on the other two days only
        fit = days != d
        xc, yc = x[fit] - x[fit].mean(), y[fit] - y[fit].mean()
        slope = (xc @ yc) / ((xc @ xc) * (1 + alpha / fit.sum()))
        expected = x[~fit] + y[fit].mean() + slope * (x[~fit] - x[fit].mean())
        np.testing.assert_allclose(starts["train"][~fit, 0, 0, 0], expected, rtol=1e-5)
    # val: the "ridge" baseline itself, fitted on all train days
    np.testing.assert_allclose(starts["val"], baselines.view_ridge(table, wins, table, val, means_min=())[0])


def test_leave_group_out_ridge_matches_refitting_each_fold():
    from sagecast_common.linalg import RidgePath, ridge_leave_group_out

    rng = np.random.default_rng(1)
    for n, f in ((60, 200), (80, 10)):  # the dual (wide) and the primal case of RidgePath
        x, y = rng.normal(size=(n, f)), rng.normal(size=(n, 3))
        groups, fit = np.repeat(np.arange(4), n // 4), rng.random(n) > 0.2
        out = ridge_leave_group_out(x @ x.T, y, groups, fit, 0.1)
        for g in range(4):
            path = RidgePath(x[fit & (groups != g)], y[fit & (groups != g)])
            np.testing.assert_allclose(out[groups == g], path.predict(x[groups == g], 0.1), atol=1e-9)
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        ridge_leave_group_out(np.eye(3), np.ones((3, 1)), np.array([0, 1, 1]), np.array([True, False, False]), 1.0)


def test_ridge_cache_returns_the_same_forecasts_without_refitting(tmp_path, monkeypatch):
    z = np.random.default_rng(1).normal(size=24)
    table = series_table(z, [9.0] * 24)
    table.day[:24] = np.repeat([1, 2, 3, 4], 6)
    table.time_ns[:24] += np.repeat(np.arange(4), 6) * 86_400 * 10**9
    table.split[:24] = np.repeat(["train", "train", "train", "val"], 6)
    kw = dict(horizons_min=(5.0, 10.0), context_scans=1, step_min=5.0)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val")}
    cache = tmp_path / "ridge_cache" / "key"
    first, alphas = baselines.ridge_start(table, wins, means_min=(), cache=cache)
    key = baselines.windows_key(wins)
    assert sorted(p.name for p in cache.iterdir()) == [f"fits-{key}.npz", f"start-{key}.npz"]
    uncached, _ = baselines.ridge_start(table, wins, means_min=())

    def no_fitting(*a, **k):
        raise AssertionError("refitted although the cache holds the fits")

    monkeypatch.setattr(baselines, "_fit", no_fitting)
    again, alphas_again = baselines.ridge_start(table, wins, means_min=(), cache=cache)
    assert alphas_again == alphas
    for split in ("train", "val"):
        np.testing.assert_array_equal(again[split], first[split])
        np.testing.assert_array_equal(first[split], uncached[split])
    np.testing.assert_array_equal(baselines.view_ridge(table, wins, table, wins["val"], means_min=(), cache=cache)[0],
                                  first["val"])


def test_ridge_cache_never_serves_fits_of_other_windows(tmp_path):
    """A caller that keeps only some training windows (a test's subset, a distributed rank) under the same cache
    folder gets the fits of its own windows, not those cached for all of them."""
    z = np.random.default_rng(2).normal(size=30)
    table = series_table(z, [9.0] * 30)
    table.day[:30] = np.repeat([1, 2, 3, 4, 5], 6)
    table.time_ns[:30] += np.repeat(np.arange(5), 6) * 86_400 * 10**9
    table.split[:30] = np.repeat(["train", "train", "train", "train", "val"], 6)
    kw = dict(horizons_min=(5.0, 10.0), context_scans=1, step_min=5.0)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val")}
    cache = tmp_path / "ridge_cache" / "key"
    full, _ = baselines.ridge_start(table, wins, means_min=(), cache=cache)
    w = wins["train"]
    fewer = {**wins, "train": samples.Windows(w.anchor[:9], w.ctx[:9], w.tgt[:9], w.horizons_min)}
    assert baselines.windows_key(fewer) != baselines.windows_key(wins)
    cached, _ = baselines.ridge_start(table, fewer, means_min=(), cache=cache)
    fresh, _ = baselines.ridge_start(table, fewer, means_min=())
    assert len(cached["train"]) == len(fewer["train"]) == 9 != len(full["train"])
    for split in ("train", "val"):
        np.testing.assert_array_equal(cached[split], fresh[split])


def test_ridge_cache_key_changes_with_every_setting():
    settings = {"features": "both", "train_days": None, "embeddings": "abc", "index": "def"}
    key = baselines.ridge_cache_key(settings)
    assert key == baselines.ridge_cache_key(dict(settings))
    for k, v in (("features", "grid"), ("train_days", 10), ("embeddings", "abd"), ("index", "deg")):
        assert baselines.ridge_cache_key({**settings, k: v}) != key, k
