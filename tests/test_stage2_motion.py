"""The optional cloud-motion input of stage 2: the per-scan join, each view's own frame (rotating views and motion
together changes nothing, views alone do), motion=None as before, bad tables, and training + held-out evaluation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.cli import UserError
from stage2_forecast import baselines, evaluate, samples, train
from stage2_forecast.train import Config, build_model
from tests.fixtures_stage2 import make_fake_stage1
from tests.test_stage2_views import rotate, with_horizon_row

START = pd.Timestamp("2023-06-01 16:00", tz="UTC")  # the fake sky's first scan (tests.fixtures_stage2)


def motion_rows(seed: int = 0, *, days=("2023-06-01", "2023-06-02", "2023-06-03"), scans: int = 48) -> pd.DataFrame:
    """One random vector per scan start of the fake sky (scans every 5 min from 16:00 UTC); scan 2 of each day has
    nothing to track (NaN), and day 1 has no rows for scans 10–14."""
    rng = np.random.default_rng(seed)
    rows = []
    for date in days:
        start = pd.Timestamp(f"{date} 16:00", tz="UTC")
        for s in range(scans):
            if date == days[0] and 10 <= s <= 14:
                continue
            u, v = (np.nan, np.nan) if s == 2 else rng.normal(0, 6, 2)
            rows.append({"vsn": "W056", "timestamp": start + pd.Timedelta(minutes=5 * s), "motion_u": u,
                         "motion_v": v, "other": 1.0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("motion") / "motion.parquet"
    motion_rows().to_parquet(path)
    return path


@pytest.fixture(scope="module")
def data(fake_stage1_run, motion_file):
    table = samples.load_scan_table(fake_stage1_run)
    samples.join_motion(table, samples.read_motion(motion_file))
    mean, std = samples.standardise(table)
    win = samples.build_windows(table, context_scans=3, split="train")
    clim = baselines.fit_climatology(table)
    damping = baselines.fit_damping(samples.gather(table, win, np.arange(len(win)), clim=clim))
    return fake_stage1_run, motion_file, table, win, mean, std, clim, damping


def turn(batch: dict, k: int) -> dict:
    """The ring of views rotated by k columns and the motion vector by k × 45° clockwise (east of north)."""
    out, a = rotate(batch, k), np.deg2rad(45.0 * k)
    u, v = batch["motion"][..., 0], batch["motion"][..., 1]
    out["motion"] = torch.stack([u * np.cos(a) + v * np.sin(a), v * np.cos(a) - u * np.sin(a)], dim=-1)
    return out


def test_each_scan_takes_the_latest_vector_at_or_before_it_and_means_average_their_scans(data):
    _, _, table, *_ = data
    minutes = (table.time_ns[:-1] - START.value) / 60e9  # day 1 is the first 46 scans (scans 5, 6 are missing)
    scan = {int(round(m)) // 5: i for i, m in enumerate(minutes[:46])}
    day1 = motion_rows().iloc[:43]  # 48 scans less the 5 without a row
    by_scan = day1.set_index((day1["timestamp"] - START).dt.total_seconds().astype(int) // 300)[["motion_u",
                                                                                                "motion_v"]]
    np.testing.assert_allclose(table.motion[scan[4]], by_scan.loc[4], rtol=1e-6)
    assert not table.has_motion[scan[2]] and (table.motion[scan[2]] == 0).all()  # NaN: nothing to track
    # scans 10–14 have no row: 10–12 take scan 9's (≤ 15 min old, never a later one), 13 and 14 none
    for s in (10, 11, 12):
        np.testing.assert_allclose(table.motion[scan[s]], by_scan.loc[9], rtol=1e-6)
    assert not table.has_motion[[scan[13], scan[14]]].any() and not table.has_motion[-1]
    # per slot: the context scans' vectors, then each mean over the scans of its window that have one
    anchor, ctx = np.array([scan[20]]), np.array([[scan[20], scan[19], scan[18]]])
    uv, has = samples.motion_context(table, anchor, ctx, means_min=(30.0,))
    np.testing.assert_allclose(uv[0, :3], table.motion[ctx[0]], rtol=1e-6)
    window = [scan[s] for s in range(15, 21)]  # (t − 30, t]: scans 15..20
    np.testing.assert_allclose(uv[0, 3], table.motion[window].mean(0), rtol=1e-5)
    uv, has = samples.motion_context(table, np.array([scan[14]]), np.array([[scan[14], scan[13], scan[12]]]),
                                     means_min=(30.0,))
    assert has[0].tolist() == [False, False, True, True]  # 9..14 hold scans 9, 10, 11, 12 with a vector
    np.testing.assert_allclose(uv[0, 3], by_scan.loc[9], rtol=1e-5)


def test_projection_is_along_and_across_each_views_azimuth():
    motion, mask = torch.tensor([[[0.0, 10.0], [3.0, 0.0]]]), torch.tensor([[True, False]])  # north 10, east 3 m/s
    f = samples.project_motion(motion, mask)  # (1, P, K, 3)
    assert f.shape == (1, 8, 2, 3)
    # column 0 faces north: a wind toward the north moves clouds outward along it; column 2 faces east: across it
    # anticlockwise (toward column 1); column 4 faces south: inward
    torch.testing.assert_close(f[0, [0, 2, 4], 0], torch.tensor([[1.0, 0, 1], [0, -1.0, 1], [-1.0, 0, 1]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(f[0, 2, 1], torch.tensor([0.3, 0.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_rotating_views_and_motion_together_rotates_the_forecasts_views_alone_do_not(data, variant, rows):
    run, motion, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(12), clim=clim)
    assert batch["motion_mask"].any() and not batch["motion_mask"].all()
    if rows == 2:
        batch = with_horizon_row(batch)
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, dropout=0.0,
                               residual_base="damped", motion=str(motion)), mean, std, damping).eval()
    torch.nn.init.normal_(model.head[1].weight, std=0.5)  # a trained head: the network part must show
    with torch.no_grad():
        out = model(batch)
        for k in (1, 3, 6):
            torch.testing.assert_close(model(turn(batch, k)), torch.roll(out, k, dims=2), atol=1e-5, rtol=1e-5)
            # the same views with the motion left as it was: the model reads the motion, in the views' frames
            assert (model(rotate(batch, k)) - torch.roll(out, k, dims=2)).abs().max() > 1e-3
        # and the ridge's rows rotate with the ring in the same way
        x = samples.ridge_features(batch)
        torch.testing.assert_close(samples.ridge_features(turn(batch, 3)), torch.roll(x, 3, dims=1), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_without_motion_the_model_and_the_ridge_are_those_of_before(data, variant):
    run, motion, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(12), clim=clim)
    plain = {k: v for k, v in batch.items() if k not in ("motion", "motion_mask")}
    models = {}
    for key, path in (("none", None), ("motion", str(motion))):
        torch.manual_seed(0)
        models[key] = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32,
                                         dropout=0.0, residual_base="damped", motion=path), mean, std,
                                  damping).eval()
    none, moving = models["none"].state_dict(), models["motion"].state_dict()
    extra = set(moving) - set(none)
    advect = {f"advect.{k}" for k in ("log_height", "log_sharp", "lag_bias", "null", "horizon_scale", "gate",
                                      "motion_slot")}
    assert extra == {"enc.motion.weight", "enc.motion.bias"} | advect and set(none) < set(moving)
    for k, v in none.items():  # the motion map is drawn last: every other weight is the same draw
        assert torch.equal(v, moving[k]), k
    for key in extra - advect:  # the advection path starts closed (its gate at 0): it adds exactly nothing
        torch.nn.init.zeros_(models["motion"].get_parameter(key))
    with torch.no_grad():
        out = models["none"](plain)
        assert torch.equal(models["none"](batch), out)  # a model without motion ignores it
        assert torch.equal(models["motion"](batch), out)  # a zero motion map adds exactly nothing
    # the ridge: without motion in the batch its design is the first columns of the one with motion
    x = samples.ridge_features(batch)
    assert torch.equal(samples.ridge_features(plain), x[..., :samples.ridge_features(plain).shape[-1]])
    plain_table = samples.load_scan_table(run)
    samples.standardise(plain_table)
    assert plain_table.motion is None and "motion" not in samples.gather(plain_table, win, np.arange(3))


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file or folder"),
    ("empty_folder", "no truth.parquet under this folder"),
    ("no_column", "has no column motion_v"),
    ("garbage", "is unreadable"),
    ("csv_text", "is unreadable"),
    ("other_sky", "no row within 15 min before any scan of W056"),
])
def test_a_missing_or_garbage_motion_table_is_a_user_error(fake_stage1_run, tmp_path, case, expected):
    path = {"missing": tmp_path / "nope.parquet", "empty_folder": tmp_path / "raw", "no_column": tmp_path / "m.csv",
            "garbage": tmp_path / "m.parquet", "csv_text": tmp_path / "t.csv", "other_sky": tmp_path / "raw"}[case]
    rows = motion_rows()
    if case == "empty_folder":
        (path / "W056").mkdir(parents=True)
    elif case == "no_column":
        rows.drop(columns="motion_v").to_csv(path, index=False)
    elif case == "garbage":
        path.write_bytes(b"not a parquet file at all")
    elif case == "csv_text":
        rows.assign(motion_u="fast").to_csv(path, index=False)
    elif case == "other_sky":  # a raw folder's truth of other dates (a held-out sky's)
        (path / "W056").mkdir(parents=True)
        motion_rows(days=("2022-07-01",)).to_parquet(path / "W056" / "truth.parquet")
    cfg = Config(stage1_run=str(fake_stage1_run), run_dir=str(tmp_path / "run"), motion=str(path))
    with pytest.raises(UserError, match=expected):
        train.load_data(cfg)


def test_the_training_cli_says_it_in_one_line(fake_stage1_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.cli([f"stage1_run={fake_stage1_run}", f"run_dir={tmp_path / 'run'}", f"motion={tmp_path / 'no.csv'}",
                   "epochs=1", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and "no such file or folder" in err


def test_trained_with_motion_and_evaluated_on_a_held_out_sky_with_its_own_table(fake_stage1_run, motion_file,
                                                                                 tmp_path):
    run = tmp_path / "detr"
    # residual_base=ridge: whatever the one epoch did, the run's forecasts depend on the motion through its start
    train.main(Config(stage1_run=str(fake_stage1_run), run_dir=str(run), epochs=1, batch_size=16, width=32,
                      dropout=0.0, horizons_min=(5.0, 15.0), residual_base="ridge", motion=str(motion_file)))
    assert json.loads((run / "config.json").read_text())["motion"] == str(motion_file)
    cfg, model, _ = train.load_run(run)
    assert model.enc.motion is not None
    other = make_fake_stage1(tmp_path / "other", seed=1)  # another sky on the same dates
    held = tmp_path / "held.csv"
    motion_rows(seed=5).to_csv(held, index=False)
    kw = dict(eval_stage1_run=other, n_boot=20)
    report = evaluate.evaluate(fake_stage1_run, [run], tmp_path / "out", motion=str(held), **kw)
    assert report["eval"]["motion"] == str(held) and report["n_test"] > 0
    again = evaluate.evaluate(fake_stage1_run, [run], tmp_path / "out2", **kw)  # the runs' own table
    assert again["eval"]["motion"] == str(motion_file)
    # the held-out sky's vectors reach both the network and the ridge
    for name in ("detr", "ridge"):
        assert report["variants"][name]["5"]["mse"] != again["variants"][name]["5"]["mse"]
    with pytest.raises(UserError, match="held-out sky's motion table"):
        evaluate.evaluate(fake_stage1_run, [run], tmp_path / "out3", motion=str(held), n_boot=20)


def test_the_ridge_cache_key_follows_the_motion_tables_content_not_its_path(fake_stage1_run, tmp_path):
    table = samples.load_scan_table(fake_stage1_run)
    path = tmp_path / "motion.csv"
    motion_rows(0).to_csv(path, index=False)
    cfg = Config(stage1_run=str(fake_stage1_run), motion=str(path))
    key = train.ridge_cache(cfg, table)
    assert train.ridge_cache(cfg, table) == key  # the same table: the same fits
    motion_rows(1).to_csv(path, index=False)  # edited in place: its ridge is refitted, not served from the cache
    assert train.ridge_cache(cfg, table) != key
    raw = tmp_path / "raw" / "W056"
    raw.mkdir(parents=True)
    motion_rows(1).to_parquet(raw / "truth.parquet")  # a raw folder: every truth.parquet under it counts
    folder = train.ridge_cache(Config(stage1_run=str(fake_stage1_run), motion=str(raw.parent)), table)
    motion_rows(2).to_parquet(raw / "truth.parquet")
    assert train.ridge_cache(Config(stage1_run=str(fake_stage1_run), motion=str(raw.parent)), table) != folder
