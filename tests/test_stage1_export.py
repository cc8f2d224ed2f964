"""Stage-1 export and evaluate: table contract, sidecar, probe contract, metric helpers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.cli import UserError
from sagecast_common.config import build_config
from sagecast_common.linalg import ridge_fit
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
    assert list(table.columns) == ["vsn", "timestamp", "position", "split", "is_day", "emb_rgb", "emb_thermal"]
    assert len(table) == len(index) == 48 and (~table["is_day"]).sum() == 8  # night rows too
    assert set(table["split"]) == {"train", "val", "test"}
    assert table["timestamp"].tolist() == index["timestamp"].tolist()
    emb = np.stack(table["emb_rgb"].to_numpy())
    assert emb.shape == (48, 512) and emb.dtype == np.float32 and np.isfinite(emb).all()
    info = json.loads((run / "embeddings.json").read_text())
    assert info["dim_rgb"] == info["dim_thermal"] == 512 and info["rgb_arch"] == "resnet10t"
    assert info["checkpoint_sha256"] == file_sha256(run / "encoders.pt")
    assert info["prepared_dir"] == str(fake_data.resolve())
    assert info["prepared_fingerprint"] == "sha256:" + file_sha256(fake_data / "index.parquet")
    assert info["config"]["projector"] == "32-32"
    # batched export equals one row at a time through the saved encoders (eval mode, no batch coupling)
    again = export.extract_features(*_encoders_and_rows(run, fake_data, [0, 7]), batch_size=1,
                                    device=torch.device("cpu"))
    np.testing.assert_allclose(again["thermal"], np.stack(table["emb_thermal"].to_numpy()[[0, 7]]), atol=1e-5)


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
    for kind in ("trained", "random_init"):
        r = saved[kind]["retrieval"]
        assert r["n_test"] == 6 and r["chance_top5"] == pytest.approx(5 / 6)
        assert 0 <= r["rgb_to_thermal"]["top1"] <= r["rgb_to_thermal"]["top5"] <= 1
        assert 1 <= saved[kind]["rgb"]["rankme"] <= 512
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


def test_metric_helpers_on_known_inputs():
    x = np.random.default_rng(0).normal(size=(50, 4))
    assert evaluate.retrieval(x, x * 3.0) == {"top1": 1.0, "top5": 1.0}
    assert evaluate.retrieval(x, -x)["top5"] == 0.0
    assert evaluate.rankme(np.outer(np.arange(50.0), np.ones(4))) == pytest.approx(1.0, abs=1e-4)
    assert evaluate.rankme(np.eye(4).repeat(10, axis=0)) == pytest.approx(3.0, rel=1e-3)  # centred: rank 3
    assert evaluate.collapse_stats(np.c_[x, np.zeros(50)])["dead_dims_frac"] == pytest.approx(0.2)
    xm, ym, coef = ridge_fit(x, x @ np.array([1.0, -2.0, 0.0, 0.5]) + 3, alpha=1e-9)
    np.testing.assert_allclose(coef, [1.0, -2.0, 0.0, 0.5], atol=0.1)
