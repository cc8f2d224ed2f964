"""The report in a real browser: headless Debian Chromium (Selenium + chromium-driver), no download.

Without the `chromium` / `chromium-driver` packages these tests skip with a line naming them, and fail when
`CI` is set (.ci/run installs both, as it installs shellcheck): tests.system_programs.
"""

from __future__ import annotations

import base64
import io
import shutil

import pytest
import torch
from PIL import Image

from sagecast_report import build as report
from sagecast_report.browser import WIDTH, BrowserMissing, ReportProblem, check_report, find_browser
from stage2_forecast import evaluate, train
from tests.system_programs import missing


@pytest.fixture(scope="session")  # session: set up before the session-scoped pipeline fixtures it guards
def browser():
    """Chromium and its driver, checked before any fixture spends time on a pipeline."""
    absent = [(name, package) for name, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"))
              if shutil.which(name) is None]
    if absent:
        missing(" ".join(package for _, package in absent), " and ".join(name for name, _ in absent))
    return find_browser()


@pytest.fixture(scope="module")
def real_runs(browser, tmp_path_factory, tiny_prepared, tiny_stage1_run):
    """A small real pipeline: synthetic raw -> prepared -> stage 1 (tiny, trained) -> stage 2 (1-epoch detr)."""
    torch.set_num_threads(1)
    stage2 = tmp_path_factory.mktemp("report_stage2")
    train.main(train.Config(stage1_run=str(tiny_stage1_run), run_dir=str(stage2 / "detr"), epochs=1, batch_size=8,
                            width=32, dropout=0.0, log_every=1, horizons_min=(60.0, 120.0), context_scans=2,
                            device="cpu"))
    evaluate.evaluate(tiny_stage1_run, [stage2 / "detr"], stage2)
    return {"prepared": tiny_prepared, "stage1": tiny_stage1_run, "stage2": stage2}


@pytest.mark.slow
def test_report_of_a_real_tiny_pipeline_passes_the_browser_checks(browser, real_runs, capsys):
    out = real_runs["stage2"] / "report.html"
    report.main(["--prepared", str(real_runs["prepared"]), "--stage1", str(real_runs["stage1"]),
                 "--stage2", str(real_runs["stage2"]), "--out", str(out), "--check"])
    # data strip + timeline, loss, PCA, retrieval, skill, daily cloud fraction, forecast strips
    assert "checked in headless Chromium: 8 images" in capsys.readouterr().out
    shot = real_runs["stage2"] / "report_screenshot.png"
    result = check_report(out, shot)
    assert result["sections"] == ["data", "stage1", "stage2", "verdict"] and result["images"] == 8
    with Image.open(shot) as image:
        assert (image.width, image.height) == (result["width"], result["height"])  # the full page
        assert WIDTH - 20 <= image.width <= WIDTH and image.height > 2000  # 1280 px less a scroll bar


def test_the_checks_catch_a_broken_image_a_console_error_and_a_wide_page(browser, tmp_path):
    bad_png = base64.b64encode(b"not a png").decode()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><section id="data"></section>'
                    f'<img src="data:image/png;base64,{bad_png}" alt="broken">'
                    '<div style="width:3000px">wide</div><script>console.error("boom")</script></body></html>')
    with pytest.raises(ReportProblem) as e:
        check_report(page, tmp_path / "shot.png")
    message = str(e.value)
    for expected in ("boom", "'broken'", "section #verdict missing", "horizontal scroll"):
        assert expected in message
    with Image.open(io.BytesIO((tmp_path / "shot.png").read_bytes())) as image:
        assert image.width > WIDTH  # written even when a check fails, and it shows the too-wide page


def test_a_missing_browser_names_the_debian_packages(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("pathlib.Path.exists", lambda self: False)
    with pytest.raises(BrowserMissing, match="apt-get install -y chromium chromium-driver"):
        find_browser()
