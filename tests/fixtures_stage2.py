"""A fake stage-1 run dir for stage-2 tests, written exactly per the stage-1/data contracts.

The sky is a periodic 1-D field over the 8 sky presets that moves one preset per scan (wind), so the future
at a preset equals an upwind preset now. Images are drawn from the field, and the embeddings are the saved
tiny encoders applied to those images (so the frozen JEPA context encoder reproduces them exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data.formats import SKY_PRESETS
from data.prepare.outputs import write_complete
from sagecast_common.encoders import build_encoder, save_encoders
from stage2_forecast.samples import load_images

S = 16
SPLITS = {"2023-06-01": "train", "2023-06-02": "val", "2023-06-03": "test"}


def _encoders():
    kw = {"img_size": S, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    return {name: (build_encoder("vit_tiny_patch16_224", in_chans=c, kwargs=kw),
                   {"arch": "vit_tiny_patch16_224", "in_chans": c, "kwargs": kw})
            for name, c in (("rgb", 3), ("thermal", 1))}


def make_fake_stage1(root: Path, *, hours: float = 4.0, drop_scans=(5, 6), drop_capture=(3, 2), seed: int = 0) -> Path:
    """Write ROOT/prepared and ROOT/stage1; returns the stage-1 run dir.

    Scans every 5 min from 16:00 UTC (09:00 local in San Diego), captures 3 s apart; scans `drop_scans` of
    every day are missing (a gap) and capture (scan, slot) `drop_capture` of every day is missing. `seed` draws
    the sky field (another seed = another sky for held-out tests; the encoders stay the same).
    """
    rng = np.random.default_rng(seed)
    field = rng.uniform(0, 1, size=8)
    recs = []
    for day, (date, split) in enumerate(SPLITS.items()):
        start = pd.Timestamp(f"{date} 16:00", tz="UTC")
        for s in range(int(hours * 12)):
            if s in drop_scans:
                continue
            for slot, pos in enumerate(SKY_PRESETS):
                if (s, slot) == tuple(drop_capture):
                    continue
                value = field[(slot - s) % 8] * (0.6 + 0.15 * day + 0.2 * np.sin(s / 7))
                recs.append({"vsn": "W056", "timestamp": start + pd.Timedelta(minutes=5 * s, seconds=3 * slot),
                             "position": pos, "split": split, "local_date": date, "is_day": True,
                             "sun_elevation": 40.0, "lon": -117.2, "lat": 32.7, "cloud_fraction": value,
                             "value": value})
    index = pd.DataFrame(recs)
    index["row"] = np.arange(len(index))
    index["timestamp"] = index["timestamp"].astype("datetime64[ns, UTC]")
    ramp = np.linspace(0, 1, S, dtype=np.float32)[None, :, None]
    v = index["value"].to_numpy(np.float32)[:, None, None]
    across, down = ramp.transpose(0, 2, 1), ramp  # (1, 1, S) and (1, S, 1)
    rgb = np.clip(255 * v * (0.3 + 0.7 * across + 0 * down), 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
    thermal = (-40 + 40 * v * down + 0 * across).astype(np.float16)
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    np.save(prepared / "rgb.npy", rgb)
    np.save(prepared / "thermal.npy", thermal)
    (prepared / "norm_stats.json").write_text(json.dumps(
        {"rgb_mean": [0.3, 0.3, 0.3], "rgb_std": [0.2, 0.2, 0.2], "thermal_mean": -30.0, "thermal_std": 10.0}))
    index.drop(columns="value").to_parquet(prepared / "index.parquet")
    write_complete(prepared)  # the completion record data.PairedSkyDataset checks

    run = root / "stage1"
    encoders = _encoders()
    save_encoders(run / "encoders.pt", encoders, {"img_size": S, "prepared": str(prepared)})
    images = load_images(prepared, index["row"].to_numpy())
    with torch.no_grad():
        emb = {k: encoders[k][0].eval()(images[k]).numpy().astype(np.float32) for k in ("rgb", "thermal")}
    table = index[["vsn", "timestamp", "position", "split", "is_day"]].copy()
    table["emb_rgb"], table["emb_thermal"] = list(emb["rgb"]), list(emb["thermal"])
    table.to_parquet(run / "embeddings.parquet")
    (run / "embeddings.json").write_text(json.dumps({"dim_rgb": 8, "dim_thermal": 8, "prepared_dir": str(prepared)}))
    d = 16
    (run / "probe_cloud_fraction.json").write_text(json.dumps({
        "features": "concat(emb_rgb, emb_thermal)", "feature_mean": [0.0] * d, "feature_std": [1.0] * d,
        "coef": [0.01] * d, "intercept": 0.3, "test_r2": 0.5}))
    return run


@pytest.fixture(scope="session")
def fake_stage1_run(tmp_path_factory) -> Path:
    return make_fake_stage1(tmp_path_factory.mktemp("stage2_fake"))
