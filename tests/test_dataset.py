"""data.PairedSkyDataset: row selection, exact normalised frames, paired augmentation, loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data import PairedSkyDataset
from data.prepare.outputs import write_complete

S = 24


@pytest.fixture(scope="module")
def square_prepared(tmp_path_factory):
    """A prepared folder by the contract: a bright RGB square and a warm thermal square at the same pixels."""
    out = tmp_path_factory.mktemp("square_prepared")
    rng = np.random.default_rng(0)
    n = 12
    rgb = np.zeros((n, S, S, 3), np.uint8)
    thermal = np.full((n, S, S), -40.0, np.float16)
    for i in range(n):
        y, x = rng.integers(3, S - 9, 2)
        rgb[i, y:y + 6, x:x + 6] = 255
        thermal[i, y:y + 6, x:x + 6] = 20.0
    index = pd.DataFrame({
        "vsn": "W056", "timestamp": pd.date_range("2023-05-18T12:00Z", periods=n, freq="5min").as_unit("ns"),
        "position": 1, "rgb_file": [f"r{i}" for i in range(n)], "thermal_file": [f"t{i}" for i in range(n)],
        "lat": 41.7, "lon": -87.99, "sun_elevation": 30.0, "is_day": np.arange(n) % 4 != 3,
        "local_date": "2023-05-18", "split": ["train"] * 6 + ["val"] * 3 + ["test"] * 3, "row": np.arange(n),
        "t_min": -40.0, "t_mean": -30.0, "t_max": 20.0, "cloud_fraction": 0.1})
    index.to_parquet(out / "index.parquet")
    np.save(out / "rgb.npy", rgb)
    np.save(out / "thermal.npy", thermal)
    (out / "norm_stats.json").write_text(json.dumps(
        {"rgb_mean": [0.1, 0.2, 0.3], "rgb_std": [0.5, 0.5, 0.5], "thermal_mean": -30.0, "thermal_std": 10.0}))
    write_complete(out)
    return out


def centroid(mask: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(mask.numpy())
    return np.array([ys.mean(), xs.mean()])


def test_rows_splits_and_day_filter(square_prepared):
    train = PairedSkyDataset(square_prepared, "train")
    assert len(train) == 5 and train.index.row.tolist() == [0, 1, 2, 4, 5]  # row 3 is night
    assert len(PairedSkyDataset(square_prepared, None, day_only=False)) == 12
    assert PairedSkyDataset(square_prepared, "all").index.row.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    with pytest.raises(ValueError, match="split must be"):
        PairedSkyDataset(square_prepared, "training")


def test_full_frames_are_exactly_the_normalised_arrays(square_prepared):
    ds = PairedSkyDataset(square_prepared, "val", augment=False, day_only=False)
    rgb, thermal = ds[1]
    assert rgb.shape == (3, S, S) and thermal.shape == (1, S, S) and rgb.dtype == thermal.dtype == torch.float32
    raw_rgb = np.load(square_prepared / "rgb.npy")[7].astype(np.float32) / 255
    expected = (raw_rgb - np.array([0.1, 0.2, 0.3])) / 0.5
    assert np.allclose(rgb.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    raw_th = np.load(square_prepared / "thermal.npy")[7].astype(np.float32)
    assert np.allclose(thermal[0].numpy(), (raw_th + 30) / 10, atol=1e-6)
    assert torch.equal(ds[1][0], rgb)  # deterministic
    assert PairedSkyDataset(square_prepared, "val", augment=False, crop_size=16)[0][0].shape == (3, 16, 16)


def test_augmentation_crops_the_same_sky_in_both_modalities(square_prepared):
    torch.manual_seed(0)
    ds = PairedSkyDataset(square_prepared, None, day_only=False, crop_size=20, seed=1, independent_crops=False)
    views = set()
    for i in range(len(ds)):
        for _ in range(4):
            rgb, thermal = ds[i]
            assert rgb.shape == (3, 20, 20) and thermal.shape == (1, 20, 20)
            hot = thermal[0] > ((20 - 40) / 2 + 30) / 10  # halfway between -40 °C and 20 °C, normalised
            bright = rgb.mean(0) > rgb.mean(0).amin() + 0.5 * (rgb.mean(0).amax() - rgb.mean(0).amin())
            if hot.sum() < 4 or bright.sum() < 4:  # the square was cropped (almost) away in both
                assert hot.sum() < 12 and bright.sum() < 12
                continue
            assert np.abs(centroid(hot) - centroid(bright)).max() < 1.0
            views.add(tuple(np.round(centroid(hot), 1)))
    assert len(views) > len(ds)  # the crops really vary


def test_independent_crops_differ_but_keep_the_minimum_overlap(square_prepared):
    from data.dataset import MIN_CROP_IOU, box_iou

    assert box_iou((0, 0, 4, 4), (0, 2, 4, 4)) == pytest.approx(8 / 24)  # hand-computed: 2×4 of 4·4+4·4-8
    assert box_iou((0, 0, 4, 4), (4, 4, 2, 2)) == 0.0
    ds = PairedSkyDataset(square_prepared, "train", seed=3)
    ds._gen = torch.Generator().manual_seed(0)
    pairs = [ds.crop_pair() for _ in range(2000)]
    ious = np.array([box_iou(a, b) for a, b in pairs])
    assert ious.min() >= MIN_CROP_IOU == 0.5
    assert (ious < 0.9).mean() > 0.5  # the boxes really differ: no shared crop geometry to match
    for a, b in pairs:
        for top, left, h, w in (a, b):
            assert 0 <= top and 0 <= left and top + h <= S and left + w <= S and h > 0 and w > 0
    # the warm/bright square lands at different places in the two views, but both still show it
    torch.manual_seed(0)
    offsets = []
    for i in range(len(ds)):
        rgb, thermal = ds[i]
        grey = rgb.mean(0)
        hot, bright = thermal[0] > 2.0, grey > grey.amin() + 0.5 * (grey.amax() - grey.amin())  # halfway
        if hot.sum() >= 4 and bright.sum() >= 4:
            offsets.append(np.abs(centroid(hot) - centroid(bright)).max())
    assert offsets and max(offsets) > 1.0


def test_loader_workers_and_distributed_sampler(square_prepared):
    ds = PairedSkyDataset(square_prepared, None, day_only=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 3 and batches[0][0].shape == (4, 3, S, S) and batches[0][1].shape == (4, 1, S, S)
    seen = []
    for rank in range(2):
        sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True)
        seen += list(sampler)
    assert sorted(seen) == list(range(12))


def test_import_data_does_not_import_torch():
    code = "import sys, data; assert 'torch' not in sys.modules; data.read_thermal_csv; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "ok", out.stderr


def test_tiny_prepared_serves_day_frames(tiny_prepared):
    ds = PairedSkyDataset(tiny_prepared, "train")
    assert len(ds) > 0 and ds.index.is_day.all() and (ds.index.split == "train").all()
    rgb, thermal = ds[0]
    assert torch.isfinite(rgb).all() and torch.isfinite(thermal).all() and rgb.shape == (3, 32, 32)
