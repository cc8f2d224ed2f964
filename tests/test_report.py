"""The HTML report builder on tiny inputs: sections, images, size, escaping, optional keys, absent files."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pytest
import torch

from stage2_forecast import evaluate, report, train
from stage2_forecast.report_figures import strip_anchors
from stage2_forecast.report_inputs import Forecasts, nearest_frames
from stage2_forecast.samples import ScanTable, Windows
from tests.fixtures_stage2 import make_fake_stage1


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    """ROOT/prepared, ROOT/stage1 (fake, no ckpt.pt) and ROOT/stage2 (one 1-epoch detr run + report.json)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report_runs")
    stage1 = make_fake_stage1(root)
    train.main(train.Config(stage1_run=str(stage1), run_dir=str(root / "stage2" / "detr"), epochs=1,
                            batch_size=16, width=32, dropout=0.0, log_every=1, horizons_min=(5.0, 15.0),
                            device="cpu"))
    evaluate.evaluate(stage1, [root / "stage2" / "detr"], root / "stage2")
    return root


def build(root, tmp_path):
    out = tmp_path / "report.html"
    report.build(prepared=root / "prepared", stage1=root / "stage1", stage2=root / "stage2", out=out)
    return out.read_text()


def test_report_has_the_four_sections_images_and_stays_small(fake_runs, tmp_path):
    page = build(fake_runs, tmp_path)
    assert [m for m in re.findall(r'<section id="(\w+)"', page)] == ["data", "stage1", "stage2", "verdict"]
    # data strip + timeline, PCA (no ckpt.pt: retrieval and loss not available), skill, daily cloud, strips
    images = re.findall(r'<img src="data:image/(png|jpeg);base64,', page)
    assert len(images) == 6 and images.count("jpeg") == 2
    assert page.count("not available") >= 2  # training_loss.png and the retrieval examples
    assert len(page.encode()) < 10e6
    verdict = json.loads((fake_runs / "stage2" / "report.json").read_text())["verdict"]
    assert verdict and all(html.escape(sentence, quote=True) in page for sentence in verdict)


def test_optional_keys_are_shown_and_text_is_escaped(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    rep = json.loads((root / "stage2" / "report.json").read_text())
    rep["variants"]["detr"]["15"]["skill_ci"] = [0.125, 0.25]
    rep["comparisons"] = [{"a": "detr", "b": "persistence", "horizon": 15, "diff": 0.01, "ci": [-0.5, 0.75],
                           "distinguishable": False}]
    rep["verdict"] = ["15 min: detr <b>ties</b> persistence at 15 min"]
    (root / "stage2" / "report.json").write_text(json.dumps(rep))
    page = build(root, tmp_path)
    assert "[0.125, 0.250]" in page and "[-0.500, 0.750]" in page
    assert "detr &lt;b&gt;ties&lt;/b&gt; persistence at 15 min" in page and "<b>ties" not in page


def test_absent_stage_outputs_say_not_available(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs / "prepared", root / "prepared")
    page = build(root, tmp_path)  # no stage1/ and no stage2/ at all
    stage2 = page.split('<section id="stage2">')[1].split("</section>")[0]
    assert "not available" in stage2 and "<img" not in stage2
    assert len(re.findall(r"<img ", page)) == 2  # only the data section draws


def test_cli_without_a_prepared_index_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--runs", str(tmp_path), "--no-browser"])
    assert e.value.code == 2 and "index.parquet" in capsys.readouterr().err


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


def test_strip_anchors_take_the_largest_cloud_change_once_per_anchor():
    table = _table(np.array([0.1, 0.2, 0.9, 0.85]), np.zeros((5, 1, 2), np.float32))
    # samples: anchor 0 -> 1 (0.1), anchor 1 -> 2 (0.7), anchor 2 -> 3 (0.05), anchor 1 again -> 3 (0.65)
    win = Windows(anchor=np.array([0, 1, 2, 1]), ctx=np.zeros((4, 1), int), tgt=np.array([[1], [2], [3], [3]]),
                  horizons_min=(5.0,))
    fc = Forecasts(table=table, win=win, horizons_min=(5.0,), mask=np.ones((4, 1, 1), bool), nn_scan={}, nn_dist={})
    assert strip_anchors(fc, 0, k=2) == [(1, 0), (0, 0)]
    assert strip_anchors(fc, 0, k=10) == [(1, 0), (0, 0), (2, 0)]
