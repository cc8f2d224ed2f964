"""Stage 1 end to end on the tiny synthetic prepared set: train → export → evaluate, through the real data code."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch


@pytest.mark.slow
def test_train_export_evaluate_on_tiny_synthetic(tiny_stage1_run, tiny_prepared):
    run = tiny_stage1_run
    for name in ("ckpt.pt", "encoders.pt", "config.json", "env.json", "log.jsonl", "training_loss.png",
                 "embeddings.parquet", "embeddings.json", "metrics.json",
                 "probe_cloud_fraction.json", "embeddings_2d.png"):
        assert (run / name).stat().st_size > 0, name
    table = pd.read_parquet(run / "embeddings.parquet")
    index = pd.read_parquet(tiny_prepared / "index.parquet")
    assert len(table) == len(index)
    assert table[["vsn", "timestamp", "position"]].equals(index[["vsn", "timestamp", "position"]])
    metrics = json.loads((run / "metrics.json").read_text())
    for kind in ("trained", "random_init"):
        r = metrics[kind]["retrieval"]
        assert r["chance_top5"] == pytest.approx(5 / r["n_test"])
        for direction in ("rgb_to_thermal", "thermal_to_rgb"):
            assert 0 <= r[direction]["top1"] <= r[direction]["top5"] <= 1
            lo, hi = r[direction]["top5_ci"]  # resampled over the test days
            assert 0 <= lo <= r[direction]["top5"] <= hi <= 1
        lo, hi = metrics[kind]["probes"]["cloud_fraction"]["ridge_test_r2_ci"]  # from per-day sums: rounding
        point = metrics[kind]["probes"]["cloud_fraction"]["ridge_test_r2"]
        assert lo - 1e-9 * abs(point) <= point <= hi + 1e-9 * abs(point)
    probe = json.loads((run / "probe_cloud_fraction.json").read_text())
    info = json.loads((run / "embeddings.json").read_text())
    assert len(probe["coef"]) == len(probe["feature_mean"]) == info["dim_rgb"] + info["dim_thermal"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    assert log[-1]["step"] == ckpt["step"] == ckpt["total_steps"] > 0 and ckpt["epoch"] == 2
