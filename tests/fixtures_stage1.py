"""Fixtures for stage-1 tests: a fake prepared dir for unit tests, and a tiny trained stage-1 run.

`tiny_stage1_run` (session-scoped) trains, exports and evaluates a tiny run on the data fixture
`tiny_prepared`; stage-2 tests reuse it. The fake prepared dir follows the prepared-dir contract exactly, with
`FakePairedSkyDataset` standing in for `data.PairedSkyDataset` so unit tests stay fast and independent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from data.prepare.outputs import write_complete

TINY = {"rgb_arch": "resnet10t", "thermal_arch": "resnet10t", "projector": "32-32", "epochs": 2,
        "batch_size": 8, "base_lr": 0.2, "warmup_epochs": 0.5, "num_workers": 0, "log_every": 1,
        "device": "cpu"}


def write_fake_prepared(out, *, n: int = 48, size: int = 32, seed: int = 0) -> None:
    """index.parquet + rgb.npy + thermal.npy + norm_stats.json for `n` pairs of one node, 4 presets."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    ts = pd.Timestamp("2023-05-18T12:00Z") + pd.to_timedelta(np.arange(n) // 4 * 5, unit="min")
    split = np.array(["train"] * (n * 2 // 3) + ["val"] * (n // 6) + ["test"] * (n - n * 2 // 3 - n // 6))
    cloud = rng.uniform(0, 1, n)
    rgb = (rng.uniform(0, 255, (n, size, size, 3)) * 0.3 + cloud[:, None, None, None] * 170).astype(np.uint8)
    thermal = (20 - 30 * cloud[:, None, None] + rng.normal(0, 2, (n, size, size))).astype(np.float16)
    index = pd.DataFrame({
        "vsn": "W056", "timestamp": ts.as_unit("ns"), "position": np.tile([1, 5, 9, 13], n // 4 + 1)[:n],
        "rgb_file": [f"rgb/{i}.jpg" for i in range(n)], "thermal_file": [f"thermal/{i}.csv" for i in range(n)],
        "lat": 41.7, "lon": -87.98, "sun_elevation": 40.0, "is_day": np.arange(n) % 6 != 5,
        "local_date": "2023-05-18", "split": split, "row": np.arange(n), "t_min": thermal.min(axis=(1, 2)),
        "t_mean": thermal.mean(axis=(1, 2)), "t_max": thermal.max(axis=(1, 2)), "cloud_fraction": cloud})
    index.to_parquet(out / "index.parquet")
    np.save(out / "rgb.npy", rgb)
    np.save(out / "thermal.npy", thermal)
    train = split == "train"
    (out / "norm_stats.json").write_text(json.dumps({
        "rgb_mean": (rgb[train] / 255).mean(axis=(0, 1, 2)).tolist(),
        "rgb_std": (rgb[train] / 255).std(axis=(0, 1, 2)).tolist(),
        "thermal_mean": float(thermal[train].astype(np.float32).mean()),
        "thermal_std": float(thermal[train].astype(np.float32).std())}))
    write_complete(out)  # the completion record data.PairedSkyDataset checks


class FakePairedSkyDataset(torch.utils.data.Dataset):
    """Minimal stand-in for data.PairedSkyDataset: contract signature, flips drawn from torch's global RNG."""

    def __init__(self, prepared_dir, split, *, augment=True, day_only=True, crop_size=None, seed=0,
                 independent_crops=True):
        from pathlib import Path

        prepared_dir = Path(prepared_dir)
        index = pd.read_parquet(prepared_dir / "index.parquet")
        if split not in (None, "all"):
            index = index[index["split"] == split]
        if day_only:
            index = index[index["is_day"]]
        self.index = index.reset_index(drop=True)
        self.rgb = np.load(prepared_dir / "rgb.npy")
        self.thermal = np.load(prepared_dir / "thermal.npy")
        self.stats = json.loads((prepared_dir / "norm_stats.json").read_text())
        self.augment = augment

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        row = int(self.index["row"].iloc[i])
        rgb = torch.from_numpy(self.rgb[row]).permute(2, 0, 1).float() / 255
        mean, std = torch.tensor(self.stats["rgb_mean"]), torch.tensor(self.stats["rgb_std"])
        rgb = (rgb - mean[:, None, None]) / std[:, None, None]
        thermal = (torch.from_numpy(self.thermal[row].astype(np.float32))[None] - self.stats["thermal_mean"])
        thermal = thermal / self.stats["thermal_std"]
        if self.augment and torch.rand(()) < 0.5:
            rgb, thermal = rgb.flip(-1), thermal.flip(-1)
        return rgb, thermal


@pytest.fixture(scope="session")
def fake_prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake_prepared")
    write_fake_prepared(out)
    return out


@pytest.fixture
def fake_data(monkeypatch, fake_prepared):
    """The fake prepared dir, with data.PairedSkyDataset replaced by the fake loader for this test."""
    import data

    monkeypatch.setattr(data, "PairedSkyDataset", FakePairedSkyDataset, raising=False)
    return fake_prepared


@pytest.fixture(scope="session")
def tiny_stage1_run(tmp_path_factory, tiny_prepared):
    """A trained + exported + evaluated tiny stage-1 run on `tiny_prepared` (shared with stage-2 tests)."""
    from sagecast_common.config import build_config
    from stage1_jea import evaluate, export, train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("stage1_run")
    cfg = build_config(train.Config, {**TINY, "prepared": str(tiny_prepared), "run_dir": str(run),
                                      "log_every": 5})
    train.main(cfg)
    export.export(run, batch_size=64, device="cpu")
    evaluate.evaluate(run, batch_size=64)
    return run
