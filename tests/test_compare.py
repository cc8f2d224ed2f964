"""`sagecast-compare` end to end on a tiny sky: every step runs, the reports carry intervals, a rerun resumes;
killed during stage 1 it trains to the end on the rerun; stop signals reach the running step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sagecast_pipeline import compare, run

REPO = Path(__file__).resolve().parents[1]
# hourly scans, tiny encoders and one stage-2 epoch: the wiring, not the science (docs/results.md has the full run)
TINY_STAGE1 = ["rgb_arch=resnet10t", "thermal_arch=resnet10t", "projector=32-32", "epochs=1", "batch_size=16",
               "num_workers=0", "device=cpu"]
TINY_STAGE2 = ["epochs=1", "batch_size=8", "horizons_min=60,120", "context_scans=2", "device=cpu"]


@pytest.mark.slow
def test_compare_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    base = ["--out", str(out), "--days", "4", "--heldout-days", "1", "--interval-min", "60", "--seeds", "0", "1",
            "--stage1", *TINY_STAGE1, "--stage2", *TINY_STAGE2, "--n-boot", "50"]
    argv = [*base, "--train-days", "1"]
    compare.main(argv)

    prepared = json.loads((out / "prepared_train" / "report.json").read_text())
    assert prepared["fractions"] == [0.62, 0.06, 0.32]
    assert all(len(prepared["splits"][s]["days"]) >= 1 for s in ("train", "val", "test"))
    runs = sorted(p.name for p in (out / "stage2").iterdir())
    assert runs == ["detr_s0", "detr_s1", "jepa_s0", "jepa_s1"]
    main_cfg = json.loads((out / "stage2" / "detr_s0" / "config.json").read_text())
    assert main_cfg["motion"] == str(out / "raw_train") and main_cfg["advect"]  # the synthetic sky's motion: default
    for name in ("report", "report_heldout"):
        report = json.loads((out / name / "scores.json").read_text())
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
    index = pd.read_parquet(out / "prepared_train" / "index.parquet")
    assert set(index["preset_row"]) == {"sky", "horizon"}  # both rows by default; stage 2 reads the horizon as context
    # the synthetic truth gives the headroom block: each network against the strongest baseline and the oracle
    room = json.loads((out / "report" / "scores.json").read_text())["headroom"]
    assert room["available"] and room["oracle"] == "oracle_view_horizon_cf_<h>" and set(room["models"]) == {"detr",
                                                                                                          "jepa"}
    scored = room["models"]["detr"]["60"]
    assert {"ridge", "preset_mean", "persistence"} <= set(scored["mae_baselines"])  # the candidates, each scored
    assert scored["mae_baseline"] == min(scored["mae_baselines"].values())
    assert scored["mae_oracle"] <= scored["mae_baseline"] + 1e-12 or scored["headroom"] is None
    if scored["headroom"] is not None:
        lo, hi = scored["headroom_ci"]
        assert lo <= scored["headroom"] <= hi
    # the learning curve: the one-day training sets of both variants, scored on the same test days, and the main
    # runs on every training day as the last point
    curve = json.loads((out / "report" / "learning_curve.json").read_text())
    assert curve["train_days"] == sorted({1, len(prepared["splits"]["train"]["days"])})
    assert {"detr", "jepa", "ridge"} <= set(curve["methods"])
    assert [len(points) for points in curve["methods"]["detr"].values()] == [2, 2]  # 60 and 120 min: 1 day, all
    assert json.loads((out / "stage2_days1" / "detr_s0" / "config.json").read_text())["train_days"] == 1
    assert "Learning curve" in (out / "report" / "report.html").read_text()
    timings = json.loads((out / "timings.json").read_text())
    assert {"synthetic_train", "prepare_heldout", "stage1_train", "stage2_jepa_s1", "report_heldout"} <= set(timings)

    capsys.readouterr()
    compare.main(argv)  # everything exists: every step is skipped, nothing is redone
    printed = capsys.readouterr().out
    assert "stage1_train: done" in printed and "report_html: done" in printed
    assert " -m " not in printed  # no step command was launched

    # reuses data and stage 1; new stage-2 runs only (no learning curve: the half of this test's time it took)
    compare.main([*base, "--features", "grid", "--seeds", "0"])
    printed = capsys.readouterr().out
    assert "stage1_train: done" in printed and "stage2_grid_detr_s0: " in printed
    assert "days1" not in printed
    assert sorted(p.name for p in (out / "stage2_grid").iterdir()) == ["detr_s0", "jepa_s0"]
    grid_cfg = json.loads((out / "stage2_grid" / "detr_s0" / "config.json").read_text())
    assert grid_cfg["features"] == "grid" and grid_cfg["motion"] == str(out / "raw_train")
    assert (out / "report_grid" / "scores.json").exists() and (out / "report_grid_heldout" / "scores.json").exists()


def test_a_stopped_comparison_keeps_the_times_of_finished_steps(tmp_path):
    timings = tmp_path / "timings.json"
    ok = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()"]
    run.run_one("first", tmp_path / "first.done", [*ok, str(tmp_path / "first.done")], prog="t", timings=timings)
    with pytest.raises(run.StepFailed) as failed:
        run.run_one("second", tmp_path / "second.done", [sys.executable, "-c", "raise SystemExit(3)"], prog="t",
                    timings=timings)
    assert failed.value.status == 3
    saved = json.loads(timings.read_text())
    assert set(saved) == {"first"} and saved["first"] >= 0
    ran = run.run_one("first", tmp_path / "first.done", [sys.executable, "-c", "raise SystemExit(3)"], prog="t",
                      timings=timings)
    assert not ran and json.loads(timings.read_text()) == saved  # its record exists: skipped


def test_a_step_that_exits_0_without_its_record_is_not_done(tmp_path):
    with pytest.raises(run.StepFailed, match="without writing its completion record"):
        run.run_one("quiet", tmp_path / "done", [sys.executable, "-c", "pass"], prog="t")


# A step that takes a while to save when asked to stop, as stage training does (checkpoint, exit 75).
SLOW_TO_STOP = """
import os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(1.0)
    (out / "saved").write_text(f"{signum} {os.getpid()}")
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(out / "started").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""
COMPARE_WITH_ONE_STEP = """
import sys
from pathlib import Path
from sagecast_pipeline import compare, steps, tools
tools.TOOLS["sagecast-slow"] = "slow_to_stop"
compare.comparison = lambda args: [steps.Step("slow", "sagecast-slow", (args.out,), Path(args.out) / "done")]
compare.main(["--out", sys.argv[1]])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_the_running_step_and_compare_waits_for_it(tmp_path, sig):
    (tmp_path / "slow_to_stop.py").write_text(SLOW_TO_STOP)
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    # its own session: the signal goes to compare's PID alone, not to a process group holding the step
    proc = subprocess.Popen([sys.executable, "-c", COMPARE_WITH_ONE_STEP, str(out)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    step_pid = int((out / "started").read_text())
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 75, err  # the step's status: checkpointed, not finished
    assert (out / "saved").read_text() == f"{int(sig)} {step_pid}"  # it got the signal and finished saving
    with pytest.raises(ProcessLookupError):
        os.kill(step_pid, 0)  # nothing left running on the folder
    assert err.strip().splitlines() == [f"sagecast-compare: {sig.name}: stopped while slow ran (it exited 75); "
                                        "rerun to resume"]


@pytest.mark.slow
def test_killed_during_stage1_the_rerun_trains_to_the_end_before_exporting(tmp_path, monkeypatch, capsys):
    from sagecast_common.checkpoint import load_checkpoint

    out = tmp_path / "cmp"
    stage1 = [*TINY_STAGE1, "epochs=2", "log_every=1"]  # the last value of a key wins
    argv = ["--out", str(out), "--days", "4", "--heldout-days", "1", "--interval-min", "60", "--seeds", "0",
            "--variants", "detr", "--stage1", *stage1, "--stage2", *TINY_STAGE2, "--n-boot", "50"]
    proc = subprocess.Popen([sys.executable, "-m", "sagecast_pipeline.compare", *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ckpt, log = out / "stage1" / "ckpt.pt", out / "stage1" / "log.jsonl"

    def in_epoch_2() -> bool:  # epoch 1 and everything written at its end are done; epoch 2 is under way
        return ckpt.exists() and any(json.loads(x)["epoch"] >= 2 for x in log.read_text().splitlines()[:-1])

    deadline = time.monotonic() + 600
    while not in_epoch_2():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole comparison, the trainer with it, as a lost node would
    proc.wait()
    killed_at = load_checkpoint(ckpt)
    assert killed_at["step"] < killed_at["total_steps"]

    graph = compare.comparison
    until_export = {"synthetic_train", "prepare_train", "synthetic_heldout", "prepare_heldout", "stage1_train",
                    "stage1_export"}
    monkeypatch.setattr(compare, "comparison", lambda args: [s for s in graph(args) if s.name in until_export])
    capsys.readouterr()
    compare.main(argv)
    printed = capsys.readouterr().out
    assert "stage1_train: done" not in printed and "[compare] stage1_train: " in printed
    exported = json.loads((out / "stage1" / "embeddings.json").read_text())
    assert exported["step"] == killed_at["total_steps"]  # embeddings of the finished encoders


def two_node_registry(tmp_path, monkeypatch) -> None:
    """W056 (San Diego from 2023-05-20) and a second node W099 near Chicago, through SAGECAST_NODES."""
    registry = json.loads((REPO / "data" / "sage" / "nodes.json").read_text())
    registry["W099"] = [{"from": None, "to": None, "lat": 41.70, "lon": -87.99, "elevation_m": 220.0,
                         "tz": "America/Chicago", "source": "a test node"}]
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps(registry))
    monkeypatch.setenv("SAGECAST_NODES", str(path))


def sky_files(raw: Path, vsn: str, days: list[str], positions=(1, 5)) -> None:
    """Empty RGB and thermal files named as sagecast-download writes them, one capture at local noon per day:
    what compare's refusals read (names only)."""
    from data.formats import rgb_name, thermal_name

    for day in days:
        for pos in positions:
            ts = pd.Timestamp(f"{day}T19:00:00Z") + pd.Timedelta(seconds=3 * pos)
            for kind, name in (("rgb", rgb_name(768, 256, pos)), ("thermal", thermal_name(pos))):
                path = raw / vsn / kind / f"{ts.value}-{name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


@pytest.mark.parametrize("case", ["few_days", "no_sky", "heldout_in_train", "heldout_node_absent"])
def test_raw_refusals_are_one_line_and_exit_2(tmp_path, monkeypatch, case):
    two_node_registry(tmp_path, monkeypatch)
    raw, other = tmp_path / "raw", tmp_path / "other"
    days = ["2023-06-01", "2023-06-02", "2023-06-03"]
    sky_files(raw, "W099", days)
    sky_files(raw, "W056", days[:2])
    argv = ["--out", str(tmp_path / "cmp"), "--raw", str(raw)]
    expected = {"few_days": "has 2 whole local days of sky-preset pairs to train on (W056 2); the train/val/test "
                            "splits need at least 3",
                "no_sky": "no RGB–thermal pairs of sky presets to train on",
                "heldout_in_train": "holds W056, also in --raw",
                "heldout_node_absent": "--heldout-node W123 is not in"}[case]
    if case == "few_days":
        argv += ["--heldout-node", "W099"]
    elif case == "no_sky":
        raw = tmp_path / "horizon"
        sky_files(raw, "W056", days, positions=(2, 6))  # not sky presets
        argv = ["--out", str(tmp_path / "cmp"), "--raw", str(raw)]
    elif case == "heldout_in_train":
        sky_files(other, "W056", days[:1])
        argv += ["--heldout-raw", str(other)]
    else:
        argv += ["--heldout-node", "W123"]
    proc = subprocess.run([sys.executable, "-m", "sagecast_pipeline.compare", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "cmp").exists()  # refused before anything was written


def test_raw_comparison_reads_no_synthetic_truth_in_its_commands(tmp_path, monkeypatch, capsys):
    two_node_registry(tmp_path, monkeypatch)
    raw = tmp_path / "raw"
    sky_files(raw, "W056", ["2023-06-01", "2023-06-02", "2023-06-03"])
    sky_files(raw, "W099", ["2023-06-01"])
    compare.main(["--out", str(tmp_path / "cmp"), "--raw", str(raw), "--heldout-node", "W099", "--print"])
    printed = capsys.readouterr().out
    evaluations = [line for line in printed.splitlines() if line.startswith("sagecast-stage2-evaluate")]
    assert len(evaluations) == 2 and all("--real-data" in c and " --raw " not in c for c in evaluations)
    probes = [line for line in printed.splitlines() if line.startswith("sagecast-stage1-evaluate")]
    assert len(probes) == 1 and "--real-data" in probes[0]  # the stage-1 probe reads no truth either
    assert "sagecast-synthetic" not in printed
    assert f"--raw {tmp_path / 'cmp' / 'raw_train'} " in printed and f"--raw {tmp_path / 'cmp' / 'raw_heldout'} " \
        in printed  # the two node views are prepared apart
    assert not (tmp_path / "cmp").exists()  # --print makes nothing

    table = tmp_path / "motion.csv"  # the user's motion table serves training and the held-out node alike
    compare.main(["--out", str(tmp_path / "cmp"), "--raw", str(raw), "--heldout-node", "W099", "--print",
                  "--motion-table", str(table), "--seeds", "0"])
    printed = capsys.readouterr().out
    trains = [line for line in printed.splitlines() if line.startswith("sagecast-stage2-train")]
    assert len(trains) == 2 and all(f" motion={table}" in c and "/stage2_motion/" in c for c in trains)
    evaluations = [line for line in printed.splitlines() if line.startswith("sagecast-stage2-evaluate")]
    assert [f"--motion {table}" in c for c in evaluations] == [False, True]  # the held-out one
    assert all("--real-data" in c for c in evaluations)


def test_the_synthetic_comparison_has_the_motion_of_each_sky_unless_told_not_to(tmp_path, capsys):
    out = tmp_path / "cmp"
    compare.main(["--out", str(out), "--seeds", "0", "--train-days", "10", "--print"])
    lines = capsys.readouterr().out.splitlines()
    trains = [line for line in lines if line.startswith("sagecast-stage2-train")]
    assert len(trains) == 4 and all(f" motion={out / 'raw_train'} " in c + " " for c in trains)
    assert {c.split("run_dir=")[1].split()[0] for c in trains} == {
        str(out / d / f"{v}_s0") for d in ("stage2", "stage2_days10") for v in ("detr", "jepa")}
    evaluations = {c.split("--out ")[1].split()[0]: c for c in lines if c.startswith("sagecast-stage2-evaluate")}
    assert set(evaluations) == {str(out / r) for r in ("report", "report_heldout", "report_days10")}
    held = evaluations[str(out / "report_heldout")]
    assert f"--motion {out / 'raw_heldout'}" in held and f"--eval-stage1-run {out / 'stage1_heldout'}" in held
    assert not any("--motion " in c for r, c in evaluations.items() if not r.endswith("_heldout"))  # the runs' own

    compare.main(["--out", str(out), "--seeds", "0", "--no-motion", "--print"])
    printed = capsys.readouterr().out
    trains = [line for line in printed.splitlines() if line.startswith("sagecast-stage2-train")]
    assert len(trains) == 2 and all("/stage2_nomotion/" in c and " motion=" not in c for c in trains)
    assert f"--out {out / 'report_nomotion_heldout'}" in printed and "--motion " not in printed
    assert "# stage1_train:" in printed  # steps 1–3 shared
    assert not out.exists()


def test_a_run_folder_trained_with_other_inputs_is_refused_not_reused(tmp_path):
    out = tmp_path / "cmp"
    old = out / "stage2" / "detr_s0"
    old.mkdir(parents=True)
    (old / "complete.json").write_text("{}")
    (old / "config.json").write_text(json.dumps({"motion": None, "features": "both"}))  # before motion by default
    proc = subprocess.run([sys.executable, "-m", "sagecast_pipeline.compare", "--out", str(out), "--seeds", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{old} was trained with motion=None" in proc.stderr and "another --out" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["stage2"]  # refused before any step ran
    # a motion run from before the advection path (no advect in its config) is another model too
    (old / "config.json").write_text(json.dumps({"motion": str(out / "raw_train"), "features": "both"}))
    proc = subprocess.run([sys.executable, "-m", "sagecast_pipeline.compare", "--out", str(out), "--seeds", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "advect=False" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [["--no-motion", "--motion-table", "m.csv", "--raw", "r"],
                                  ["--motion-table", "m.csv"]])
def test_contradictory_motion_options_are_refused(argv):
    with pytest.raises(SystemExit) as stopped:
        compare.parse(["--out", "x", *argv])
    assert stopped.value.code == 2


@pytest.mark.slow
def test_compare_on_downloaded_data_with_a_held_out_node(tmp_path, monkeypatch):
    """The user's flow: two nodes downloaded from (the double of) SAGE, compared with one held out; the
    generator's truth is there but unreadable, and nothing may read it."""
    from data.synthetic.generate import generate
    from tests.sage_double import SageDouble

    two_node_registry(tmp_path, monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.netrc
    src, raw, out = tmp_path / "src", tmp_path / "raw", tmp_path / "cmp"
    generate(src, nodes=["W056", "W099"], start="2023-06-01", days=4, interval_min=60, seed=0, size="small",
             fault_rate=0.0, progress=False)
    with SageDouble(src, user="u", token="t", lifetime_s=600) as d:
        subprocess.run([sys.executable, "-m", "data.sage.download", "--vsn", "W056", "--vsn", "W099", "--start",
                        "2023-06-01", "--end", "2023-06-06", "--out", str(raw), "--endpoint", f"{d.url}/api/v1/query",
                        "--storage-url", d.url, "--backoff", "0.01", "--timeout", "5"],
                       cwd=REPO, check=True, capture_output=True, timeout=300,
                       env={**os.environ, "SAGE_USER": "u", "SAGE_TOKEN": "t"})
    for vsn in ("W056", "W099"):
        assert (raw / vsn / "rgb").is_dir() and not (raw / vsn / "truth.parquet").exists()
        (raw / vsn / "truth.parquet").write_bytes(b"not a parquet file: any reader of the truth fails on it")

    compare.main(["--out", str(out), "--raw", str(raw), "--heldout-node", "W099", "--seeds", "0",
                  "--stage1", *TINY_STAGE1, "--stage2", *TINY_STAGE2, "--n-boot", "50"])

    assert set(pd.read_parquet(out / "prepared_train" / "index.parquet")["vsn"]) == {"W056"}
    assert set(pd.read_parquet(out / "prepared_heldout" / "index.parquet")["vsn"]) == {"W099"}
    for name in ("report", "report_heldout"):
        report = json.loads((out / name / "scores.json").read_text())
        assert report["n_test"] > 0 and "cloud_fraction_truth" not in report
        for method in ("detr", "jepa", "ridge", "persistence"):
            for row in report["variants"][method].values():
                lo, hi = row["skill_ci"]
                assert lo <= row["skill_vs_persistence"] <= hi
        assert "synthetic oracles" in report["not_on_real_data"]
        assert "- synthetic oracles: not available on real data: " in (out / name / "report.md").read_text()
    held = json.loads((out / "report_heldout" / "scores.json").read_text())["days_per_split_per_location"]
    assert [k.split("@")[0] for k in held["eval_data"]] == ["W099"]
    assert [k.split("@")[0] for k in held["train_data"]] == ["W056"]
    assert "synthetic oracles: not available on real data: " in (out / "report" / "report.html").read_text()
