"""The files each stage writes for the report: stage-1 evaluate's PCA and retrieval examples, stage-2 evaluate's
forecasts.parquet and scores.json (written last), and their unreadable-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.plots import pca_2d
from stage2_forecast import evaluate, train
from stage2_forecast.forecast_table import nearest_frames
from stage2_forecast.samples import ScanTable, Windows

KEYS = ["vsn", "timestamp", "position"]


@pytest.fixture(scope="module")
def evaluated(fake_stage1_run, tmp_path_factory):
    """Stage-2 evaluate of one 1-epoch detr run on the fake stage-1 run: (OUT, scores)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluated")
    train.main(train.Config(stage1_run=str(fake_stage1_run), run_dir=str(root / "detr"), epochs=1, batch_size=16,
                            width=32, dropout=0.0, log_every=1, horizons_min=(5.0, 15.0), device="cpu"))
    return root / "out", evaluate.evaluate(fake_stage1_run, [root / "detr"], root / "out", n_boot=20)


def test_forecasts_hold_every_scored_slot_of_every_method(evaluated, fake_stage1_run):
    out, scores = evaluated
    assert not (out / "report.json").exists() and json.loads((out / "scores.json").read_text()) == scores
    fc = pd.read_parquet(out / "forecasts.parquet")
    assert list(fc.drop_duplicates("method")["method"]) == list(scores["variants"])
    assert set(fc.loc[fc["method"] == "detr", "run"]) == {"detr"} and set(fc.loc[fc["method"] != "detr", "run"]) == {""}
    for method, per_h in scores["variants"].items():
        for h, m in per_h.items():
            assert ((fc["method"] == method) & (fc["horizon_min"] == float(h))).sum() == m["n"]
    # the persistence forecast is the frame at t: decoded, it is that frame (or one with the same embedding: the
    # fake sky repeats); a trained forecast is not a real frame
    persistence = fc[fc["method"] == "persistence"]
    assert (persistence["nearest_distance"] < 1e-3).all()
    assert (persistence["nearest_row"] == persistence["anchor_row"]).mean() > 0.9
    assert (fc.loc[fc["method"] == "detr", "nearest_distance"] > 1e-3).any()
    # rows, times and cloud fractions are the prepared index's
    index = pd.read_parquet(fake_stage1_run.parent / "prepared" / "index.parquet").set_index("row")
    for w in ("anchor", "target", "nearest"):
        frames = index.loc[fc[f"{w}_row"]]
        assert np.allclose(frames["cloud_fraction"], fc[f"{w}_cloud_fraction"], atol=1e-6)
        assert (frames["position"].to_numpy() == fc["preset"].to_numpy()).all()
        after_scan_start = frames["timestamp"].reset_index(drop=True) - fc[f"{w}_time"].reset_index(drop=True)
        assert after_scan_start.between(pd.Timedelta(0), pd.Timedelta(seconds=60)).all()  # a frame of that scan


def test_scores_are_written_last(fake_stage1_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(evaluate, "write_forecasts", broken)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scores.json").write_text("{}")  # an earlier evaluation's, stale once this one starts
    with pytest.raises(OSError, match="disk full"):
        evaluate.evaluate(fake_stage1_run, [], tmp_path / "out", n_boot=5)
    assert (tmp_path / "out" / "report.md").exists() and not (tmp_path / "out" / "scores.json").exists()


@pytest.mark.parametrize("name", ["embeddings.parquet", "embeddings.json", "probe_cloud_fraction.json"])
def test_unreadable_stage1_files_are_one_line_naming_them(fake_stage1_run, tmp_path, capsys, name):
    run = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, run)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--stage1-run", str(run), "--out", str(tmp_path / "out"), "--n-boot", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("sagecast-stage2-evaluate: error: ")
    assert str(run) in err and ("embeddings" in err if name.startswith("embeddings") else str(run / name) in err)


def _table(cloud: np.ndarray, z: np.ndarray) -> ScanTable:
    """Scans of one day, one preset column; last row = the masked sentinel."""
    S = len(cloud)
    ones = np.ones((S + 1, 1), bool)
    ones[-1] = False
    return ScanTable(vsn=np.array(["W"] * S + [""], object), time_ns=np.arange(S + 1) * 300 * 10**9,
                     day=np.array([1] * S + [-1]), split=np.array(["test"] * S + [""], object),
                     sun_elev=np.zeros(S + 1, np.float32), solar_hour=np.arange(S + 1, dtype=np.float32),
                     present=ones, is_day=ones.copy(), emb=z, rows=np.arange(S + 1)[:, None],
                     cloud=np.append(cloud, np.nan).astype(np.float32)[:, None], prepared_dir="", z=z,
                     location=np.array(["0,0"] * S + [""], object))


def test_nearest_frames_picks_the_closest_same_day_frame_by_hand():
    z = np.array([[[0.0, 0.0]], [[3.0, 4.0]], [[10.0, 0.0]], [[0.0, 0.0]]], np.float32)
    table = _table(np.array([0.1, 0.5, 0.9]), z)
    win = Windows(anchor=np.array([0, 1]), ctx=np.array([[0], [1]]), tgt=np.array([[1], [2]]), horizons_min=(5.0,))
    pred = np.array([[[[2.9, 4.0]]], [[[9.0, 0.0]]]], np.float32)  # (N, H, P, D)
    mask = np.ones((2, 1, 1), bool)
    scan, dist = nearest_frames(pred, table, win, mask)
    assert scan[:, 0, 0].tolist() == [1, 2]
    assert np.allclose(dist[:, 0, 0], [0.1, 1.0], atol=1e-4)


def test_stage1_evaluate_writes_the_pca_and_retrieval_examples_it_measured(tiny_stage1_run):
    run = tiny_stage1_run
    pca = pd.read_parquet(run / "features_pca.parquet")
    groups = pca.groupby(["features", "branch"])
    assert set(groups.groups) == {(f, b) for f in ("trained", "random_init") for b in ("rgb", "thermal")}
    keys = [g[KEYS].reset_index(drop=True) for _, g in groups]
    assert all(k.equals(keys[0]) for k in keys) and 0 < len(keys[0]) <= 600  # the same frames in every panel
    emb = pd.read_parquet(run / "embeddings.parquet")
    trained = pca[(pca["features"] == "trained") & (pca["branch"] == "rgb")]
    rows = trained[KEYS].merge(emb, on=KEYS, how="left")
    assert rows["is_day"].all()
    expected = pca_2d(np.stack(rows["emb_rgb"].to_numpy()).astype(np.float64))
    assert np.allclose(np.abs(trained[["pc1", "pc2"]].to_numpy()), np.abs(expected), atol=1e-4)  # up to sign

    ret = json.loads((run / "retrieval_examples.json").read_text())
    assert ret["split"] == "test" and 0 < len(ret["examples"]) <= 3
    for e in ret["examples"]:
        cos = [m["cos"] for m in e["matches"]]
        assert cos == sorted(cos, reverse=True) and len(cos) == min(3, ret["n_pool"])
        assert (e["rank"] <= 3) == any(m["true_pair"] for m in e["matches"])
        assert all(m["cos"] == pytest.approx(e["true_cos"]) for m in e["matches"] if m["true_pair"])
    assert (run / "probe_cloud_fraction.json").stat().st_mtime_ns >= max(
        (run / n).stat().st_mtime_ns for n in ("metrics.json", "features_pca.parquet", "retrieval_examples.json"))


def test_stage1_evaluate_with_truncated_embeddings_is_one_line_naming_them(fake_stage1_run, tmp_path, capsys):
    from stage1_jea import evaluate as s1_evaluate

    run = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, run)
    data = (run / "embeddings.parquet").read_bytes()
    (run / "embeddings.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit) as e:
        s1_evaluate.main(["--run", str(run)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"sagecast-stage1-evaluate: error: {run}: unreadable embeddings")


def test_stage1_evaluate_without_grid_columns_is_one_line_naming_the_export(fake_stage1_run, tmp_path, capsys):
    import pandas as pd

    from stage1_jea import evaluate as s1_evaluate

    run = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, run)
    emb = pd.read_parquet(run / "embeddings.parquet")
    emb.drop(columns=[c for c in ("grid_rgb", "grid_thermal") if c in emb]).to_parquet(run / "embeddings.parquet")
    with pytest.raises(SystemExit) as e:
        s1_evaluate.main(["--run", str(run)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "has no grid columns" in err and "sagecast-stage1-export --run" in err
