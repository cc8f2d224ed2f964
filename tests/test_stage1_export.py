"""Stage-1 export and evaluate: table contract, sidecar, probe contract, metric helpers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.cli import UserError
from sagecast_common.config import build_config
from sagecast_common.linalg import RidgePath, ridge_fit, ridge_predict
from sagecast_common.runio import file_sha256
from stage1_jea import evaluate, export, train
from tests.fixtures_stage1 import TINY


@pytest.fixture
def trained_fake_run(fake_data, tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    train.main(build_config(train.Config, {**TINY, "epochs": 1, "prepared": str(fake_data), "run_dir": str(run)}))
    return run


def test_export_writes_every_row_and_the_sidecar(trained_fake_run, fake_data):
    run = trained_fake_run
    export.export(run, batch_size=16, device="cpu")
    table = pd.read_parquet(run / "embeddings.parquet")
    index = pd.read_parquet(fake_data / "index.parquet")
    assert list(table.columns) == ["vsn", "timestamp", "position", "split", "is_day", "emb_rgb", "emb_thermal",
                                   "grid_rgb", "grid_thermal"]
    assert len(table) == len(index) == 48 and (~table["is_day"]).sum() == 8  # night rows too
    assert set(table["split"]) == {"train", "val", "test"}
    assert table["timestamp"].tolist() == index["timestamp"].tolist()
    emb = np.stack(table["emb_rgb"].to_numpy())
    assert emb.shape == (48, 512) and emb.dtype == np.float32 and np.isfinite(emb).all()
    info = json.loads((run / "embeddings.json").read_text())
    assert info["dim_rgb"] == info["dim_thermal"] == 512 and info["rgb_arch"] == "resnet10t"
    # resnet10t's final map is 512 channels: a 2×2 grid is 4 × 512 float32 per row
    assert info["grid"] == {"g": 2, "order": "row, col, channel", "dims": {"rgb": 512, "thermal": 512}}
    grid = np.stack(table["grid_thermal"].to_numpy())
    assert grid.shape == (48, 2 * 2 * 512) and grid.dtype == np.float32
    assert info["checkpoint_sha256"] == file_sha256(run / "encoders.pt")
    assert info["prepared_dir"] == str(fake_data.resolve())
    assert info["prepared_fingerprint"] == "sha256:" + file_sha256(fake_data / "index.parquet")
    assert info["config"]["projector"] == "32-32"
    # batched export equals one row at a time through the saved encoders (eval mode, no batch coupling)
    again = export.extract_features(*_encoders_and_rows(run, fake_data, [0, 7]), batch_size=1,
                                    device=torch.device("cpu"))
    np.testing.assert_allclose(again["thermal"], np.stack(table["emb_thermal"].to_numpy()[[0, 7]]), atol=1e-5)
    # the pooled vector is the mean of the 2×2 cells (equal cells of an even map): the grid's order is
    # (row, col, channel), so reshaping to (4, 512) and averaging the cells gives it back
    np.testing.assert_allclose(grid.reshape(48, 4, 512).mean(axis=1), np.stack(table["emb_thermal"].to_numpy()),
                               atol=1e-5)


def test_grid_cells_follow_row_col_channel_order():
    from stage1_jea.model import pooled_and_grid

    class MapOnly(torch.nn.Module):  # forward_features returns its input: a hand-made 2-channel 4×4 map
        def forward_features(self, x):
            return x

        def forward_head(self, x):
            return x.mean(dim=(2, 3))

    fmap = torch.zeros(1, 2, 4, 4)
    fmap[0, 0, :2, 2:] = 1.0  # channel 0: top-right cell
    fmap[0, 1, 2:, :2] = 3.0  # channel 1: bottom-left cell
    pooled, cells = pooled_and_grid(MapOnly(), fmap, grid=2)
    # cells (0,0) (0,1) (1,0) (1,1), each [c0, c1]
    assert cells.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0]]
    assert pooled.tolist() == [[0.25, 0.75]]


def test_export_rejects_a_bad_grid(tmp_path):
    with pytest.raises(SystemExit, match="--grid 0"):
        export.export(tmp_path, device="cpu", grid=0)


def _encoders_and_rows(run, prepared, rows):
    from sagecast_common.encoders import load_encoders
    from tests.fixtures_stage1 import FakePairedSkyDataset

    encoders, _ = load_encoders(run / "encoders.pt")
    ds = FakePairedSkyDataset(prepared, None, augment=False, day_only=False)
    return encoders, torch.utils.data.Subset(ds, rows)


def test_export_without_encoders_explains(tmp_path):
    with pytest.raises(UserError, match="encoders.pt not found: make it with `sagecast-stage1-train run_dir="):
        export.export(tmp_path, device="cpu")


def test_evaluate_writes_metrics_and_a_probe_that_reproduces_its_r2(trained_fake_run, fake_data):
    run = trained_fake_run
    export.export(run, batch_size=16, device="cpu")
    metrics = evaluate.evaluate(run, batch_size=16)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n"] == {"train": 27, "val": 7, "test": 6}
    for kind in ("trained", "random_init", "raw_pixels"):
        r = saved[kind]["retrieval"]
        assert r["n_test"] == 6 and r["chance_top5"] == pytest.approx(5 / 6)
        assert 0 <= r["rgb_to_thermal"]["top1"] <= r["rgb_to_thermal"]["top5"] <= 1
        assert r["space"].startswith("CCA")
        assert set(saved[kind]["probes"]) == {"cloud_fraction", "layout"}
    assert saved["raw_pixels"]["rgb"]["dim"] == 8 * 8 * 3 and saved["raw_pixels"]["thermal"]["dim"] == 64
    assert 1 <= saved["trained"]["rgb"]["rankme"] <= 512
    assert saved["trained"]["retrieval_projector"]["space"].startswith("trained projector")
    assert metrics["trained"]["probes"]["cloud_fraction"]["knn_k"] == 10
    assert (run / "embeddings_2d.png").stat().st_size > 0

    probe = json.loads((run / "probe_cloud_fraction.json").read_text())
    assert probe["features"] == "concat(emb_rgb, emb_thermal)" and len(probe["coef"]) == 1024
    table = pd.read_parquet(run / "embeddings.parquet").merge(pd.read_parquet(fake_data / "index.parquet"),
                                                              on=["vsn", "timestamp", "position", "split", "is_day"])
    test = table[(table["split"] == "test") & table["is_day"]]
    x = np.concatenate([np.stack(test["emb_rgb"].to_numpy()), np.stack(test["emb_thermal"].to_numpy())], axis=1)
    pred = (x - probe["feature_mean"]) / probe["feature_std"] @ np.array(probe["coef"]) + probe["intercept"]
    y = test["cloud_fraction"].to_numpy()
    assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() == pytest.approx(probe["test_r2"], abs=1e-6)


def test_thin_keeps_every_nth_capture_per_preset_in_time_order():
    # two presets, rows shuffled: preset 1 at t = 0..4 and preset 2 at t = 0..2, listed out of order
    table = pd.DataFrame({"vsn": ["W1"] * 8, "position": [1, 2, 1, 1, 2, 1, 2, 1],
                          "timestamp": [4, 2, 0, 2, 0, 1, 1, 3]})
    kept = table[evaluate.thin(table, 2)]
    assert sorted(zip(kept["position"], kept["timestamp"], strict=True)) == [(1, 0), (1, 2), (1, 4), (2, 0), (2, 2)]
    assert evaluate.thin(table, 1).all()
    with pytest.raises(ValueError, match="every must be >= 1"):
        evaluate.thin(table, 0)


def test_evaluate_every_thins_all_feature_sets_alike(trained_fake_run):
    run = trained_fake_run
    export.export(run, batch_size=16, device="cpu")
    saved = evaluate.evaluate(run, batch_size=16, every=2)
    assert saved["every"] == 2
    n = saved["n"]
    assert sum(n.values()) < 40  # the unthinned run has 27 + 7 + 6 rows
    for kind in ("trained", "random_init", "raw_pixels"):
        assert saved[kind]["retrieval"]["n_test"] == n["test"]
    assert json.loads((run / "probe_cloud_fraction.json").read_text())["every"] == 2


def test_cca_alignment_recovers_a_known_linear_map():
    from stage1_jea.baselines import aligned_retrieval, fit_cca

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    A = rng.normal(size=(6, 6)) + 3 * np.eye(6)  # invertible
    y = x @ A + 5.0  # another coordinate system of the same information
    # unaligned, the two sides share no coordinates: cosine retrieval is far from perfect
    assert evaluate.retrieval(x[200:], y[200:])["top1"] < 0.5
    align = fit_cca(x[:100], y[:100], reg=1e-9, k=6)
    zx, zy = align.transform(x[200:], y[200:])
    np.testing.assert_allclose(zx, zy, atol=1e-6)  # every canonical correlation is 1: identical variates
    split = {"train": slice(0, 100), "val": slice(100, 200), "test": slice(200, 300)}
    r = aligned_retrieval({s: x[i] for s, i in split.items()}, {s: y[i] for s, i in split.items()})
    assert r["rgb_to_thermal"] == r["thermal_to_rgb"] == {"top1": 1.0, "top5": 1.0}
    # independent noise instead of a map: nothing to align, retrieval near chance (5/100)
    noise = rng.normal(size=(300, 6))
    r = aligned_retrieval({s: x[i] for s, i in split.items()}, {s: noise[i] for s, i in split.items()})
    assert r["rgb_to_thermal"]["top5"] < 0.25


def test_layout_target_and_raw_pixels_on_a_hand_made_frame(tmp_path):
    from data.sky import clear_sky_celsius, row_elevation_deg
    from stage1_jea.baselines import raw_pixels, region_cloud_fraction

    S = 8
    clear = clear_sky_celsius(row_elevation_deg(S))[:, None].repeat(S, axis=1)  # (S, S) clear sky
    thermal = np.stack([clear, clear]).astype(np.float32)
    thermal[1, :4, 4:] += 20.0  # frame 1: the top-right quarter is cloud
    thermal[1, 4:, :2] += 20.0  # and half of the bottom-left quarter
    np.save(tmp_path / "thermal.npy", thermal.astype(np.float16))
    rgb = np.zeros((2, S, S, 3), np.uint8)
    rgb[1, :, :, 2] = 200
    np.save(tmp_path / "rgb.npy", rgb)
    y = region_cloud_fraction(tmp_path, np.array([1, 0]), grid=2)
    np.testing.assert_allclose(y, [[0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    pix = raw_pixels(tmp_path, np.array([1]), size=2)
    assert pix["rgb"].shape == (1, 12) and pix["thermal"].shape == (1, 4)
    np.testing.assert_allclose(pix["rgb"][0], [0, 0, 200] * 4)  # (row, col, channel) order


def test_metric_helpers_on_known_inputs():
    x = np.random.default_rng(0).normal(size=(50, 4))
    assert evaluate.retrieval(x, x * 3.0) == {"top1": 1.0, "top5": 1.0}
    assert evaluate.retrieval(x, -x)["top5"] == 0.0
    assert evaluate.rankme(np.outer(np.arange(50.0), np.ones(4))) == pytest.approx(1.0, abs=1e-4)
    assert evaluate.rankme(np.eye(4).repeat(10, axis=0)) == pytest.approx(3.0, rel=1e-3)  # centred: rank 3
    assert evaluate.collapse_stats(np.c_[x, np.zeros(50)])["dead_dims_frac"] == pytest.approx(0.2)
    xm, ym, coef = ridge_fit(x, x @ np.array([1.0, -2.0, 0.0, 0.5]) + 3, alpha=1e-9)
    np.testing.assert_allclose(coef, [1.0, -2.0, 0.0, 0.5], atol=0.1)
    # two targets at once (the layout probe), and more features than rows
    xc = x - x.mean(axis=0)  # standardised features are centred
    y = np.c_[xc @ np.array([1.0, 0.0, 0.0, 0.0]), xc @ np.array([0.0, 0.0, 2.0, 0.0]) - 1]
    _, y_mean, coef = ridge_fit(xc, y, alpha=1e-9)
    np.testing.assert_allclose(coef, [[1, 0], [0, 0], [0, 2], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(y_mean, [0.0, -1.0], atol=1e-12)
    wide = np.random.default_rng(1).normal(size=(10, 30))  # dual form: interpolates the rows
    fit = ridge_fit(wide, wide[:, 0], alpha=1e-6)
    np.testing.assert_allclose(ridge_predict(fit, wide), wide[:, 0], atol=1e-4)
    path = RidgePath(wide, wide[:, :2])
    np.testing.assert_allclose(path.predict(wide[:3], 1e-6), ridge_predict(ridge_fit(wide, wide[:, :2], 1e-6),
                                                                           wide[:3]), atol=1e-9)
    assert evaluate.r2(y, y) == 1.0
