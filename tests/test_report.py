"""The HTML report on tiny inputs: sections, images, size, escaping, absent and unreadable files, files only."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_report import build as report
from sagecast_report.figures import labels, strip_anchors
from stage1_jea.evaluate import pca_table, retrieval_examples
from stage2_forecast import evaluate, train
from tests.fixtures_stage2 import make_fake_stage1


def write_stage1_report_files(stage1: Path, prepared: Path) -> None:
    """What stage1_jea.evaluate writes for the report, from the fake run's embeddings (random init: noise)."""
    emb = pd.read_parquet(stage1 / "embeddings.parquet")
    index = pd.read_parquet(prepared / "index.parquet")
    sel = emb.merge(index[["vsn", "timestamp", "position", "row"]], on=["vsn", "timestamp", "position"])
    feats = {b: np.stack(sel[f"emb_{b}"].to_numpy()) for b in ("rgb", "thermal")}
    noise = {b: np.random.default_rng(0).normal(size=v.shape) for b, v in feats.items()}
    pca_table(sel, np.linspace(8, 16, len(sel)), {"trained": feats, "random_init": noise}).to_parquet(
        stage1 / "features_pca.parquet")
    test = (sel["split"] == "test").to_numpy()
    examples = retrieval_examples(sel[test].reset_index(drop=True), {b: v[test] for b, v in feats.items()})
    (stage1 / "retrieval_examples.json").write_text(json.dumps(examples))


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    """ROOT/prepared, ROOT/stage1 (fake + the report files of stage-1 evaluate, no training_loss.png) and
    ROOT/stage2 (one 1-epoch detr run + stage-2 evaluate's files)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report_runs")
    stage1 = make_fake_stage1(root)
    write_stage1_report_files(stage1, root / "prepared")
    train.main(train.Config(stage1_run=str(stage1), run_dir=str(root / "stage2" / "detr"), epochs=1,
                            batch_size=16, width=32, dropout=0.0, log_every=1, horizons_min=(5.0, 15.0),
                            device="cpu"))
    evaluate.evaluate(stage1, [root / "stage2" / "detr"], root / "stage2", n_boot=50)
    return root


def build(root, tmp_path):
    out = tmp_path / "report.html"
    report.build(prepared=root / "prepared", stage1=root / "stage1", stage2=root / "stage2", out=out)
    return out.read_text()


def test_report_has_the_four_sections_images_and_stays_small(fake_runs, tmp_path):
    page = build(fake_runs, tmp_path)
    assert [m for m in re.findall(r'<section id="(\w+)"', page)] == ["data", "stage1", "stage2", "verdict"]
    # data strip + timeline, PCA, retrieval (no training_loss.png), skill, daily cloud fraction, forecast strips
    images = re.findall(r'<img src="data:image/(png|jpeg);base64,', page)
    assert len(images) == 7 and images.count("jpeg") == 2
    section = {sid: page.split(f'<section id="{sid}">')[1].split("</section>")[0] for sid in ("stage1", "stage2")}
    assert section["stage1"].count("not available") == 1  # training_loss.png
    # every stage-2 figure is there; the one gap is the headroom, which needs the generator's truth (none here)
    assert section["stage2"].count("not available") == 1 and "needs data.synthetic truth" in section["stage2"]
    assert len(page.encode()) < 10e6
    verdict = json.loads((fake_runs / "stage2" / "scores.json").read_text())["verdict"]
    assert verdict and all(html.escape(sentence, quote=True) in page for sentence in verdict)


def test_the_report_builds_from_files_alone(fake_runs, tmp_path):
    """In a fresh interpreter: no stage package, no torch and no selenium is imported to build the report."""
    code = ("import sys; from pathlib import Path; from sagecast_report.build import build; "
            f"root = Path({str(fake_runs)!r}); "
            f"build(prepared=root / 'prepared', stage1=root / 'stage1', stage2=root / 'stage2', "
            f"out=Path({str(tmp_path / 'r.html')!r})); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'stage1_jea', 'stage2_forecast', 'torch', "
            "'selenium'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and len(re.findall(r"<img ", (tmp_path / "r.html").read_text())) == 7


def test_optional_keys_are_shown_and_text_is_escaped(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    rep = json.loads((root / "stage2" / "scores.json").read_text())
    rep["variants"]["detr"]["15"]["skill_ci"] = [0.125, 0.25]
    rep["comparisons"] = [{"a": "detr", "b": "persistence", "horizon": 15, "diff": 0.01, "ci": [-0.5, 0.75],
                           "distinguishable": False}]
    rep["verdict"] = ["15 min: detr <b>ties</b> persistence at 15 min"]
    (root / "stage2" / "scores.json").write_text(json.dumps(rep))
    page = build(root, tmp_path)
    assert "[0.125, 0.250]" in page and "[-0.500, 0.750]" in page
    assert "detr &lt;b&gt;ties&lt;/b&gt; persistence at 15 min" in page and "<b>ties" not in page


def test_names_with_dollar_signs_are_plain_text_in_figures(fake_runs, tmp_path):
    """Two runs of a method are labelled by their folder names; mathtext would fail on these at draw time."""
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    path = root / "stage2" / "forecasts.parquet"
    fc = pd.read_parquet(path)
    detr = fc[fc["method"] == "detr"]
    fc = pd.concat([fc, detr.assign(run=r"detr_$\undefinedcommand{$_s1")]).replace({"run": {"detr": r"$\frac{$"}})
    fc.to_parquet(path)
    assert set(labels(fc[fc["method"] == "detr"]).values()) == {r"$\frac{$", r"detr_$\undefinedcommand{$_s1"}
    page = build(root, tmp_path)
    assert len(re.findall(r"<img ", page)) == 7


def test_absent_stage_outputs_say_not_available(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs / "prepared", root / "prepared")
    page = build(root, tmp_path)  # no stage1/ and no stage2/ at all
    stage2 = page.split('<section id="stage2">')[1].split("</section>")[0]
    assert "not available" in stage2 and "<img" not in stage2
    assert len(re.findall(r"<img ", page)) == 2  # only the data section draws


def test_forecasts_of_another_prepared_folder_are_not_drawn_on_this_one(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    path = root / "stage2" / "forecasts.parquet"
    fc = pd.read_parquet(path)
    fc["nearest_row"] += 1  # the same numbers name other frames here (a held-out folder's rows)
    fc.to_parquet(path)
    page = build(root, tmp_path)
    assert "forecasts.parquet shows frames of another prepared folder" in page
    assert len(re.findall(r"<img ", page)) == 5


@pytest.mark.parametrize("name", ["stage2/scores.json", "stage2/forecasts.parquet", "stage1/features_pca.parquet",
                                  "stage1/retrieval_examples.json", "stage1/embeddings.json", "prepared/rgb.npy"])
def test_an_unreadable_input_is_one_line_naming_it(fake_runs, tmp_path, capsys, name):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SystemExit) as e:
        report.main(["--runs", str(root), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("sagecast-report: error: ") and str(root / name) in err


def test_the_report_does_not_read_the_embeddings(fake_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(fake_runs, root)
    (root / "stage1" / "embeddings.parquet").write_bytes(b"garbage")
    assert len(re.findall(r"<img ", build(root, tmp_path))) == 7


def test_cli_without_a_prepared_index_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--runs", str(tmp_path)])
    assert e.value.code == 2 and "index.parquet" in capsys.readouterr().err


def test_check_without_a_browser_is_one_line_naming_the_packages(fake_runs, tmp_path, capsys, monkeypatch):
    exists = Path.exists
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("pathlib.Path.exists", lambda self: exists(self) and self.name != "chromedriver")
    with pytest.raises(SystemExit) as e:
        report.main(["--runs", str(fake_runs), "--out", str(tmp_path / "r.html"), "--check"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "apt-get install -y chromium chromium-driver" in err
    assert (tmp_path / "r.html").is_file()  # the report itself was written before the check


def _slots(change_from: list[float], change_to: list[float], anchors: list[int]) -> pd.DataFrame:
    t = pd.Timestamp("2023-06-03 16:00", tz="UTC")
    return pd.DataFrame({"vsn": "W056", "anchor_time": [t + pd.Timedelta(minutes=5 * a) for a in anchors],
                         "anchor_cloud_fraction": change_from, "target_cloud_fraction": change_to})


def test_strip_anchors_take_the_largest_cloud_change_once_per_anchor():
    # slots: anchor 0 (0.1), anchor 1 (0.7), anchor 2 (0.05), anchor 1 again (0.65), anchor 3 (NaN)
    slots = _slots([0.1, 0.2, 0.9, 0.2, np.nan], [0.2, 0.9, 0.85, 0.85, 0.5], [0, 1, 2, 1, 3])
    assert strip_anchors(slots, k=2).index.tolist() == [1, 0]
    assert strip_anchors(slots, k=10).index.tolist() == [1, 0, 2]


def test_labels_name_a_method_or_each_of_its_runs():
    fc = pd.DataFrame({"method": ["persistence", "detr", "detr", "jepa"], "run": ["", "detr_s0", "detr_s1", "j"]})
    assert labels(fc) == {("persistence", ""): "persistence", ("detr", "detr_s0"): "detr_s0",
                          ("detr", "detr_s1"): "detr_s1", ("jepa", "j"): "jepa"}


def test_a_raw_folder_beside_the_prepared_one_is_shown_relative(tmp_path, monkeypatch):
    from sagecast_report.build import beside

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "prepared").mkdir(parents=True)
    assert beside(tmp_path / "runs" / "raw", Path("runs/prepared")) == "runs/raw"  # no machine path on the page
    assert beside("/elsewhere/raw", Path("runs/prepared")) == "/elsewhere/raw"  # not beside: where it is
