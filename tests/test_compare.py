"""`sagecast-compare` end to end on a tiny sky: every step runs, the reports carry intervals, a rerun resumes."""

from __future__ import annotations

import json

import pytest

from stage2_forecast import compare

# hourly scans, tiny encoders and one stage-2 epoch: the wiring, not the science (README has the full run)
TINY_STAGE1 = ["rgb_arch=resnet10t", "thermal_arch=resnet10t", "projector=32-32", "epochs=1", "batch_size=16",
               "num_workers=0", "device=cpu"]
TINY_STAGE2 = ["epochs=1", "batch_size=8", "horizons_min=60,120", "context_scans=2", "device=cpu"]


@pytest.mark.slow
def test_compare_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--out", str(out), "--days", "4", "--heldout-days", "1", "--interval-min", "60", "--seeds", "0", "1",
            "--stage1", *TINY_STAGE1, "--stage2", *TINY_STAGE2, "--n-boot", "50"]
    compare.main(argv)

    prepared = json.loads((out / "prepared_train" / "report.json").read_text())
    assert prepared["fractions"] == [0.15, 0.1, 0.75]
    assert all(len(prepared["splits"][s]["days"]) >= 1 for s in ("train", "val", "test"))
    runs = sorted(p.name for p in (out / "stage2").iterdir())
    assert runs == ["detr_s0", "detr_s1", "jepa_s0", "jepa_s1"]
    for name in ("report", "report_heldout"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["n_test"] > 0
        for method in ("detr", "jepa", "persistence"):
            for row in report["variants"][method].values():
                lo, hi = row["skill_ci"]
                assert lo <= row["skill_vs_persistence"] <= hi
        # the synthetic oracles are scored against the generator's truth, apart from the measured cloud fraction
        assert {"cf_oracle_advect", "cf_oracle_cover", "cf_truth_persistence"} <= set(report["cloud_fraction_truth"])
        assert not any(name.startswith("cf_oracle") for name in report["cloud_fraction"])
        pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
        assert ("detr", "jepa") in pairs
    assert (out / "report" / "report.html").stat().st_size > 0
    timings = json.loads((out / "timings.json").read_text())
    assert {"synthetic_train", "prepare_heldout", "stage1_train", "stage2_jepa_s1", "report_heldout"} <= set(timings)

    capsys.readouterr()
    compare.main(argv)  # everything exists: every step is skipped, nothing is redone
    printed = capsys.readouterr().out
    assert "stage1_train: done" in printed and "report_html: done" in printed
    assert " -m " not in printed  # no step command was launched

    compare.main([*argv, "--features", "grid", "--seeds", "0"])  # reuses data and stage 1; new stage-2 runs only
    printed = capsys.readouterr().out
    assert "stage1_train: done" in printed and "stage2_grid_detr_s0: " in printed
    assert sorted(p.name for p in (out / "stage2_grid").iterdir()) == ["detr_s0", "jepa_s0"]
    grid_cfg = json.loads((out / "stage2_grid" / "detr_s0" / "config.json").read_text())
    assert grid_cfg["features"] == "grid"
    assert (out / "report_grid" / "report.json").exists() and (out / "report_grid_heldout" / "report.json").exists()


def test_a_stopped_comparison_keeps_the_times_of_finished_steps(tmp_path):
    import subprocess
    import sys

    timings = tmp_path / "timings.json"
    compare.step("first", tmp_path / "first.done", [sys.executable, "-c", "pass"], timings)
    with pytest.raises(subprocess.CalledProcessError):
        compare.step("second", tmp_path / "second.done", [sys.executable, "-c", "raise SystemExit(3)"], timings)
    saved = json.loads(timings.read_text())
    assert set(saved) == {"first"} and saved["first"] >= 0
    (tmp_path / "first.done").touch()
    compare.step("first", tmp_path / "first.done", [sys.executable, "-c", "raise SystemExit(3)"], timings)  # skipped
    assert json.loads(timings.read_text()) == saved
