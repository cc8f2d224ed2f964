"""Stage-2 view tokens: ring-rotation equivariance of both variants, the per-view ridge on linear data and on
the networks' own inputs, context means, horizon-row views, and nested train_days."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.cli import UserError
from stage2_forecast import baselines, samples
from stage2_forecast.train import Config, build_model

# batch key → its view (column) axis; every per-view input and target rotates along it
VIEW_AXIS = {"ctx_z": 2, "ctx_mask": 2, "tgt_z": 2, "tgt_mask": 2, "view_x": 2, "view_mask": 2, "clim_now": 1,
             "clim_tgt": 2}


def rotate(batch: dict, k: int) -> dict:
    return {key: torch.roll(v, k, dims=VIEW_AXIS[key]) if key in VIEW_AXIS else v for key, v in batch.items()}


@pytest.fixture(scope="module")
def data(fake_stage1_run):
    table = samples.load_scan_table(fake_stage1_run)
    mean, std = samples.standardise(table)
    win = samples.build_windows(table, context_scans=3, split="train")
    clim = baselines.fit_climatology(table)
    damping = baselines.fit_damping(samples.gather(table, win, np.arange(len(win)), clim=clim))
    return fake_stage1_run, table, win, mean, std, clim, damping


def with_horizon_row(batch: dict, seed: int = 0) -> dict:
    """The batch with a second (horizon) row of random views, some missing."""
    g = torch.Generator().manual_seed(seed)
    x, m = batch["view_x"], batch["view_mask"]
    mask = torch.rand(m[:, :1].shape, generator=g) > 0.2
    extra = torch.randn(x[:, :1].shape, generator=g) * mask[..., None]
    return {**batch, "view_x": torch.cat([x, extra], 1), "view_mask": torch.cat([m, mask], 1)}


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_rotating_the_ring_of_views_rotates_the_forecasts(data, variant, rows):
    run, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(12), clim=clim)
    if rows == 2:
        batch = with_horizon_row(batch)
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, dropout=0.0,
                               residual_base="damped"), mean, std, damping).eval()
    torch.nn.init.normal_(model.head[1].weight, std=0.5)  # a trained head: the network part must show
    with torch.no_grad():
        out = model(batch)
        network = out - torch.as_tensor(baselines.damped_forecast(batch, damping))
        # the views' forecasts differ from each other and from the baseline, so equivariance is not trivial
        assert network.abs().mean() > 0.1 and (out - out[:, :, :1]).abs().mean() > 0.1
        for k in (1, 3, 5):
            torch.testing.assert_close(model(rotate(batch, k)), torch.roll(out, k, dims=2), atol=1e-5, rtol=1e-5)


def test_an_absolute_column_embedding_would_fail_the_rotation_test(data):
    # The test above can fail: the same model with a per-column offset on its tokens is not equivariant.
    run, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(12), clim=clim)
    torch.manual_seed(0)
    model = build_model(Config(stage1_run=str(run), width=32, dropout=0.0, residual_base="damped"), mean, std,
                        damping).eval()
    torch.nn.init.normal_(model.head[1].weight, std=0.5)
    column = torch.randn(8, batch["view_x"].shape[-1])
    absolute = lambda b: {**b, "view_x": b["view_x"] + column[:, None]}  # noqa: E731
    with torch.no_grad():
        out = model(absolute(batch))
        assert (model(absolute(rotate(batch, 1))) - torch.roll(out, 1, dims=2)).abs().max() > 1e-3


@pytest.mark.parametrize("motion", [False, True])
@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_networks_read_only_the_model_inputs_the_ridge_is_built_from(data, variant, motion):
    run, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(6), clim=clim)
    B, R, P, K, D = batch["view_x"].shape
    if motion:  # what gather adds with a motion table joined (tests/test_stage2_motion.py joins real ones)
        g = torch.Generator().manual_seed(0)
        batch.update(motion=torch.randn(B, K, 2, generator=g) * 6, motion_mask=torch.rand(B, K, generator=g) > 0.3)
    inputs = {k: batch[k] for k in samples.MODEL_INPUTS if k in batch}
    assert set(samples.MODEL_INPUTS) - set(inputs) == (set() if motion else {"motion", "motion_mask"})
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, residual=False,
                               motion="motion.parquet" if motion else None), mean, std).eval()
    with torch.no_grad():
        assert model(inputs).shape == batch["tgt_z"].shape  # nothing else needed
    x = samples.ridge_features(inputs)  # and the ridge's design comes from the same keys
    F, m = (K + 2 + R) * D + 3, min(D, samples.MOTION_RANK)
    assert x.shape == (B, P, F + (3 * K + 4 * 3 * m if motion else 0))
    c = 0  # view 0: itself at t, its other slots, ring neighbours 7 and 1 at t
    np.testing.assert_array_equal(x[:, c, :D], batch["view_x"][:, 0, c, 0])
    np.testing.assert_array_equal(x[:, c, D:K * D], batch["view_x"][:, 0, c, 1:].flatten(1))
    np.testing.assert_array_equal(x[:, c, K * D:(K + 1) * D], batch["view_x"][:, 0, 7, 0])
    np.testing.assert_array_equal(x[:, c, (K + 1) * D:(K + 2) * D], batch["view_x"][:, 0, 1, 0])
    # then each row's ring mean at t over the views that are there (every view's row has the same)
    there = batch["view_mask"][:, 0, :, 0, None].float()
    ring = (batch["view_x"][:, 0, :, 0] * there).sum(1) / there.sum(1).clamp(min=1.0)
    np.testing.assert_allclose(x[:, c, (K + 2) * D:(K + 3) * D], ring, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(x[:, 5, (K + 2) * D:(K + 3) * D], x[:, c, (K + 2) * D:(K + 3) * D])
    # the means are inputs of both: changing them changes the networks' forecasts and the ridge's design
    moved = {**inputs, "view_x": inputs["view_x"].clone()}
    moved["view_x"][:, :, :, 3:] += 1.0
    torch.nn.init.normal_(model.head[1].weight, std=0.5)
    with torch.no_grad():
        assert (model(moved) - model(inputs)).abs().max() > 1e-3
    assert (samples.ridge_features(moved) - x).abs().max() == pytest.approx(1.0)
    if motion:  # view 0's own motion per slot, then the rectified anchor components × its coordinates at t
        own = samples.project_motion(inputs["motion"], inputs["motion_mask"])[:, c]  # (B, K, 3)
        np.testing.assert_array_equal(x[:, c, F:F + 3 * K], own.flatten(1))
        outward = own[:, 0, 0, None].clamp(min=0)
        np.testing.assert_allclose(x[:, c, F + 3 * K:F + 3 * K + m], outward * batch["view_x"][:, 0, c, 0, :m])
        turned = {**inputs, "motion": inputs["motion"].flip(-1)}  # (east, north) swapped: another direction
        with torch.no_grad():
            assert (model(turned) - model(inputs)).abs().max() > 1e-3
        assert (samples.ridge_features(turned) - x).abs().max() > 1e-3


def ring_table(n_days: int, *, scans: int = 60, P: int = 8, D: int = 2, seed: int = 0, noise: float = 0.05,
               ring: bool = False):
    """One node, P views on a ring, D dims: z(t + 5 min)[c] = A z(t)[c] + B z(t)[c−1] + C z(t)[c+1] + noise
    (`ring`: + E · the mean of all P views), restarted each day; days alternate train/val/test. Returns the
    table and the noiseless next-scan map."""
    rng = np.random.default_rng(seed)
    A, B, C = (rng.normal(scale=0.35, size=(D, D)) for _ in range(3))
    E = rng.normal(scale=0.35, size=(D, D)) if ring else np.zeros((D, D))
    if ring:  # keep the whole map stable (spectral radius ≤ 0.9), or 60 scans of it overflow float32 products
        full = np.zeros((P, D, P, D))
        for c in range(P):
            full[c, :, c] += A
            full[c, :, (c - 1) % P] += B
            full[c, :, (c + 1) % P] += C
            full[c, :, :] += E[:, None, :] / P
        rho = np.abs(np.linalg.eigvals(full.reshape(P * D, P * D))).max()
        A, B, C, E = (m * min(1.0, 0.9 / rho) for m in (A, B, C, E))
    step = lambda z: (z @ A.T + np.roll(z, 1, axis=0) @ B.T + np.roll(z, -1, axis=0) @ C.T  # noqa: E731
                      + z.mean(axis=0) @ E.T)
    zs, day, split, t = [], [], [], []
    for d in range(n_days):
        z = rng.normal(size=(P, D))
        for s in range(scans):
            zs.append(z)
            day.append(d + 1)
            split.append(("train", "train", "val", "test")[d % 4])
            t.append(pd.Timestamp("2023-06-03 16:00", tz="UTC").value + (d * 86_400 + s * 300) * 10**9)
            z = step(z) + noise * rng.normal(size=(P, D))
    n = len(zs)
    pad = lambda a, fill: np.concatenate([np.asarray(a), np.full((1,) + np.shape(a)[1:], fill,  # noqa: E731
                                                                   np.asarray(a).dtype)])
    v = np.asarray(zs, np.float32)
    table = samples.ScanTable(
        vsn=pad(np.array(["W056"] * n, object), ""), time_ns=pad(np.array(t, np.int64), 0),
        day=pad(np.array(day), -1), split=pad(np.array(split, object), ""),
        sun_elev=pad(np.full(n, 40, np.float32), 0), solar_hour=pad(np.full(n, 10.0, np.float32), 0),
        location=pad(np.array(["0,0"] * n, object), ""), present=pad(np.ones((n, P), bool), False),
        is_day=pad(np.ones((n, P), bool), False), emb=pad(v, 0), rows=pad(np.zeros((n, P), np.int64), -1),
        cloud=pad(np.zeros((n, P), np.float32), np.nan), prepared_dir="", z=pad(v, 0))
    return table, step


@pytest.mark.parametrize("ring", [False, True])
def test_per_view_ridge_recovers_a_linear_ring_dynamics(ring):
    table, step = ring_table(12, noise=0.5, ring=ring)  # ring: the whole ring's mean moves every view
    kw = dict(horizons_min=(5.0,), context_scans=1, step_min=5.0)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val", "test")}
    pred, alphas = baselines.view_ridge(table, wins, table, wins["test"], means_min=())
    now = table.z[wins["test"].anchor]
    truth = np.stack([step(z) for z in now])
    assert alphas[0] is not None
    # the noiseless map, up to the estimation error of 11 columns (own view, two neighbours, the ring mean,
    # clock) from ~2,900 pooled rows
    assert np.abs(pred[:, 0] - truth).mean() < 0.05 * np.abs(now - truth).mean()
    # one coefficient set for all views: rotating the table's ring rotates the ridge's forecasts
    rolled = dataclasses.replace(table, z=np.roll(table.z, 3, axis=1), means={})
    again, _ = baselines.view_ridge(rolled, wins, rolled, wins["test"], means_min=())
    np.testing.assert_allclose(again, np.roll(pred, 3, axis=2), atol=1e-4)


def test_the_ridge_projection_keeps_the_directions_of_largest_variance():
    table, _ = ring_table(8, D=3)
    rng = np.random.default_rng(1)  # independent dimensions with standard deviations 3, 1 and 0.1
    table.z[:-1] = rng.normal(size=table.z[:-1].shape) * np.array([3.0, 1.0, 0.1], np.float32)
    basis = baselines.principal_basis(table, 2).numpy()
    assert basis.shape == (3, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-5)
    assert abs(basis[0, 0]) > 0.99 and abs(basis[1, 1]) > 0.99 and abs(basis[2]).max() < 0.05
    assert baselines.principal_basis(table, 3) is None  # rank ≥ D: every dimension


def test_context_means_average_the_last_minutes_of_the_same_day():
    table, _ = ring_table(2, scans=20)
    table.present[7, 2] = False  # a missing capture leaves its view's mean, not the others'
    mean30, seen = samples.context_mean(table, 0, 30.0, np.array([10, 20, 3, 40]))
    # scans 5 min apart: (t − 30, t] holds scans 5..10 of the same day
    np.testing.assert_allclose(mean30[0, 0], table.z[5:11, 0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(mean30[0, 2], table.z[[5, 6, 8, 9, 10], 2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(mean30[1], table.z[20], rtol=1e-6)  # the first scan of day 2: no scan of day 1
    np.testing.assert_allclose(mean30[2], table.z[:4].mean(0), rtol=1e-5)  # the day's first scans only
    assert seen[:3].all() and not seen[3].any()  # 40: the sentinel


def test_train_days_are_nested_and_leave_val_and_test_alone():
    table, _ = ring_table(40, scans=8)
    kw = dict(horizons_min=(5.0,), context_scans=1, step_min=5.0)
    before = {s: samples.build_windows(table, split=s, **kw) for s in ("val", "test")}
    kept = {}
    for n in (10, 20):
        t = dataclasses.replace(table, split=table.split.copy(), means={})
        kept[n] = samples.restrict_train_days(t, n)
        assert set(np.unique(t.day[t.split == "train"])) == set(kept[n]) and len(kept[n]) == n
        for s, w in before.items():  # the evaluation windows are the same windows
            np.testing.assert_array_equal(samples.build_windows(t, split=s, **kw).anchor, w.anchor)
    assert set(kept[10]) < set(kept[20])
    with pytest.raises(UserError, match="only 20 train days"):
        samples.restrict_train_days(dataclasses.replace(table, split=table.split.copy()), 21)


def test_train_days_config_changes_the_training_set_not_the_test_set(fake_stage1_run):
    from stage2_forecast import train

    cfg = Config(stage1_run=str(fake_stage1_run))
    full = train.load_data(cfg)
    one = train.load_data(dataclasses.replace(cfg, train_days=1))  # the fake run has a single train day
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(full[3][s].anchor, one[3][s].anchor)
    with pytest.raises(UserError, match="train_days=2"):
        train.load_data(dataclasses.replace(cfg, train_days=2))


def test_horizon_row_captures_become_a_second_row_of_views(fake_stage1_run, tmp_path):
    import shutil

    run, prepared = tmp_path / "stage1", tmp_path / "prepared"
    shutil.copytree(fake_stage1_run, run)
    shutil.copytree(fake_stage1_run.parent / "prepared", prepared)
    index, emb = pd.read_parquet(prepared / "index.parquet"), pd.read_parquet(run / "embeddings.parquet")
    # each sky capture gets a horizon-row twin one preset on (2, 6, …), 1 s later, with the negated embedding
    hz_index = index.assign(position=index["position"] + 1, timestamp=index["timestamp"] + pd.Timedelta(seconds=1))
    hz_emb = emb.assign(position=emb["position"] + 1, timestamp=emb["timestamp"] + pd.Timedelta(seconds=1),
                        emb_rgb=[-v for v in emb["emb_rgb"]], emb_thermal=[-v for v in emb["emb_thermal"]])
    pd.concat([index, hz_index]).to_parquet(prepared / "index.parquet")
    pd.concat([emb, hz_emb]).to_parquet(run / "embeddings.parquet")
    sky_only = samples.load_scan_table(fake_stage1_run)
    table = samples.load_scan_table(run, prepared_dir=str(prepared))
    assert sky_only.n_rows == 1 and table.n_rows == 2
    np.testing.assert_array_equal(table.present, sky_only.present)  # the targets' row is unchanged
    np.testing.assert_array_equal(table.horizon_present, sky_only.present)
    np.testing.assert_array_equal(table.horizon_emb, -sky_only.emb)
    mean, std = samples.standardise(table)
    win = samples.build_windows(table, split="train")
    b = samples.gather(table, win, np.arange(4))
    assert b["view_x"].shape[1] == 2 and b["tgt_z"].shape[2] == 8
    np.testing.assert_allclose(b["view_x"][:, 1, :, 0], table.horizon_z[win.anchor[:4]])
    np.testing.assert_allclose(table.horizon_z[table.horizon_present],
                               ((table.horizon_emb - mean) / std)[table.horizon_present], rtol=1e-5)


def test_per_view_ridge_rows_leave_out_views_absent_at_t_or_at_the_target():
    table, _ = ring_table(12, noise=0.5)
    rng = np.random.default_rng(3)
    table.present[:-1] &= rng.random(table.present[:-1].shape) > 0.2  # a fifth of the views missing
    kw = dict(horizons_min=(5.0, 10.0), context_scans=1, step_min=5.0)
    win = samples.build_windows(table, split="train", **kw)
    rows = baselines._Rows(table, win, None, means_min=(), day_only=True)
    for h in range(2):
        idx, _, _, _, valid = (np.concatenate(parts) for parts in zip(*rows.at(h), strict=True))
        expected = table.present[win.anchor] & table.present[win.tgt[:, h]] & table.is_day[win.tgt[:, h]]
        np.testing.assert_array_equal(idx, np.arange(len(win)))
        np.testing.assert_array_equal(valid, expected)
        assert 0 < valid.mean() < 0.8  # the test is not vacuous: some rows are out
