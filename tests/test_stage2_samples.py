"""Stage-2 samples: scans, context/target windows (no overlap, gaps, splits), standardisation, images."""

import numpy as np
import pytest

from sagecast_common.cli import UserError
from stage2_forecast import samples


@pytest.fixture(scope="module")
def table(fake_stage1_run):
    t = samples.load_scan_table(fake_stage1_run)
    samples.standardise(t)
    return t


def test_scans_group_captures_and_mask_missing(table):
    S = len(table.time_ns) - 1
    assert S == 3 * (48 - 2)  # 3 days of 48 scans, two dropped per day
    assert table.emb.shape == (S + 1, 8, 16)
    assert not table.present[3, 2] and table.present[3].sum() == 7  # the dropped capture
    assert not table.present[-1].any()  # the sentinel row
    assert samples.scan_step_min(table) == pytest.approx(5.0)


def test_windows_never_overlap_and_respect_gaps_and_splits(table):
    wins = {s: samples.build_windows(table, context_scans=3, split=s) for s in ("train", "val", "test")}
    for split, w in wins.items():
        assert len(w) > 0
        assert (table.split[w.anchor] == split).all()
        t = table.time_ns
        for a, ctx, tgt in zip(w.anchor, w.ctx, w.tgt, strict=True):
            c, g = ctx[ctx >= 0], tgt[tgt >= 0]
            assert ctx[0] == a and not set(c) & set(g)
            assert (t[g] > t[a]).all() and (t[c] <= t[a]).all()
            assert (table.day[c] == table.day[a]).all() and (table.day[g] == table.day[a]).all()
            assert (table.split[g] == split).all()
            dt = (t[g] - t[a]) / 60e9
            assert np.all(np.abs(dt - np.array(w.horizons_min)[tgt >= 0]) <= 2.5)
    w = wins["train"]
    # Scans 5 and 6 of each day are missing: anchor = scan 0 has no 30-min target, scan 7 no 5/10-min context.
    assert w.anchor[0] == 0 and list(w.tgt[0]) == [1, 3, -1, 10]
    assert list(w.ctx[5]) == [5, -1, -1]
    # The last scans of a day have no 60-min target on that day (never the next day's scan).
    assert (w.tgt[w.anchor == 45, 3] == -1).all()


def test_standardisation_uses_train_statistics(table):
    train = table.present & (table.split == "train")[:, None]
    z = table.z[train]
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
    raw = table.emb[train].std(0)
    floor = 0.1 * np.median(raw)  # a near-constant dimension's scale is floored, so its std stays below 1
    assert (raw < floor).any()  # the fake has one such dimension
    np.testing.assert_allclose(z.std(0), np.where(raw >= floor, 1.0, raw / floor), atol=1e-3)
    assert np.abs(table.z[table.present & (table.split == "test")[:, None]].mean(0)).max() > 1e-3


def test_gather_masks_and_shapes(table):
    w = samples.build_windows(table, context_scans=3, split="train")
    b = samples.gather(table, w, np.arange(6), images=True)
    assert b["ctx_z"].shape == (6, 3, 8, 16) and b["tgt_z"].shape == (6, 4, 8, 16)
    assert b["rgb"].shape == (6, 8, 3, 16, 16) and b["thermal"].shape == (6, 8, 1, 16, 16)
    assert not b["tgt_mask"][0, 2].any()  # missing 30-min target scan
    assert (b["ctx_z"][5, 1:] == 0).all() and not b["ctx_mask"][5, 1:].any()
    assert b["ctx_dt"][2].tolist() == [0.0, -5.0, -10.0]


def test_bad_inputs_fail_clearly(table, tmp_path):
    with pytest.raises(ValueError, match="must exceed the tolerance"):
        samples.build_windows(table, horizons_min=(2.0, 15.0))
    with pytest.raises(UserError, match="embeddings.parquet.*sagecast-stage1-export"):
        samples.load_scan_table(tmp_path)
    with pytest.raises(ValueError, match="features"):
        samples.load_scan_table(tmp_path, features="ir")


def test_images_normalised_like_the_dataset(table):
    from data import PairedSkyDataset

    ds = PairedSkyDataset(table.prepared_dir, split=None, augment=False, day_only=False)
    imgs = samples.load_images(table.prepared_dir, np.array([0, 7]))
    for k, i in enumerate((0, 7)):
        rgb, thermal = ds[i]
        np.testing.assert_allclose(imgs["rgb"][k].numpy(), rgb.numpy(), atol=1e-5)
        np.testing.assert_allclose(imgs["thermal"][k].numpy(), thermal.numpy(), atol=1e-3)


def test_grid_features_read_the_exported_grids_or_name_the_export(fake_stage1_run, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="stage1_jea.export"):
        samples.load_scan_table(fake_stage1_run, features="grid")
    import shutil

    import pandas as pd

    run = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, run)
    emb = pd.read_parquet(run / "embeddings.parquet")
    g, c = 2, 3  # grid g × g × C per modality, (row, col, channel) order
    emb["grid_rgb"] = [np.arange(g * g * c, dtype=np.float32) + i for i in range(len(emb))]
    emb["grid_thermal"] = [np.full(g * g * c, -1.0, np.float32) for _ in range(len(emb))]
    emb.to_parquet(run / "embeddings.parquet")
    table = samples.load_scan_table(run, features="grid")
    assert table.emb.shape[-1] == 2 * g * g * c
    assert (table.emb[table.present][:, g * g * c:] == -1.0).all()


def test_synthetic_oracles_join_on_the_anchor_capture_and_are_scored_against_the_truth(table, tmp_path):
    import pandas as pd

    from stage2_forecast import baselines

    win = samples.build_windows(table, horizons_min=(5.0, 15.0), context_scans=1, split="test")
    assert baselines.oracle_cloud_fraction(table, win, None, (5.0, 15.0))[:2] == ({}, None)
    index = pd.read_parquet(f"{table.prepared_dir}/index.parquet")
    (tmp_path / "W056").mkdir()
    truth = index[["vsn", "timestamp", "position"]].assign(oracle_advect_cf_5=index["row"] / 1000.0)
    truth.to_parquet(tmp_path / "W056" / "truth.parquet")
    found, target, note = baselines.oracle_cloud_fraction(table, win, tmp_path, (5.0, 15.0))
    assert (found, target) == ({}, None) and "no cloud_fraction" in note  # nothing to score the oracle against
    truth.assign(cloud_fraction=index["row"] / 100.0).to_parquet(tmp_path / "W056" / "truth.parquet")
    found, target, note = baselines.oracle_cloud_fraction(table, win, tmp_path, (5.0, 15.0))
    assert set(found) == {"cf_oracle_advect", "cf_truth_persistence"} and "oracle_advect_cf_5" in note
    rows, tgt_rows = table.rows[win.anchor], table.rows[win.tgt]  # (N, P), (N, H, P)
    oracle = found["cf_oracle_advect"]
    np.testing.assert_allclose(oracle[:, 0][rows >= 0], rows[rows >= 0] / 1000.0)
    assert np.isnan(oracle[:, 0][rows < 0]).all() and np.isnan(oracle[:, 1]).all()  # no 15-min column
    np.testing.assert_allclose(target[tgt_rows >= 0], tgt_rows[tgt_rows >= 0] / 100.0)  # truth at t + h
    for h in range(2):  # persistence of the truth: the anchor's value at every horizon
        np.testing.assert_allclose(found["cf_truth_persistence"][:, h][rows >= 0], rows[rows >= 0] / 100.0)


def test_vectors_are_read_flat_in_row_order_and_ragged_ones_are_refused(fake_stage1_run, tmp_path):
    import shutil

    import pandas as pd
    import pyarrow.parquet as pq

    emb = pd.read_parquet(fake_stage1_run / "embeddings.parquet")
    captures, flat, _ = samples.read_stage1(fake_stage1_run, ("emb_thermal", "emb_rgb"))
    expected = np.concatenate([np.stack(emb["emb_thermal"]), np.stack(emb["emb_rgb"])], axis=1)
    np.testing.assert_array_equal(flat, expected)
    assert "emb_rgb" not in captures and list(captures["position"]) == list(emb["position"])
    # batch by batch (smaller batches than rows) fills the same array
    small = samples._read_vectors(pq.ParquetFile(fake_stage1_run / "embeddings.parquet"), ("emb_thermal",),
                                  len(emb), batch=7)
    np.testing.assert_array_equal(small, expected[:, :small.shape[1]])

    run = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, run)
    for row, bad in ((3, np.zeros(5, np.float32)), (0, None)):  # one vector shorter than the others; a missing one
        broken = emb.copy()
        broken["emb_rgb"] = [bad if i == row else v for i, v in enumerate(broken["emb_rgb"])]
        broken.to_parquet(run / "embeddings.parquet")
        with pytest.raises(UserError, match=r"embeddings.parquet is unreadable.*emb_rgb.*sagecast-stage1-export"):
            samples.load_scan_table(run)
