"""Batch jobs on a real Slurm: jobs/submit against a private single-node cluster (tests/slurm_cluster.py).

    python -m pytest -q tests/test_slurm.py        # skips without slurm-wlm and munge (fails when CI is set)

One cluster for the session; every job is a real `jobs/submit` of tiny CPU-only runs on the 32-px data of
`tiny_prepared` (one epoch, tiny encoders as in tests/fixtures_stage1.py), and each test asserts what Slurm
recorded (`scontrol show job`: state, exit code, start and end) and the files the steps wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_stage1 import TINY
from tests.slurm_cluster import SlurmCluster
from tests.system_programs import needs_program

REPO = Path(__file__).resolve().parents[1]
STAGE1 = [f"stage1.{k}={v}" for k, v in {**TINY, "epochs": 1}.items()]
STAGE2 = ["stage2.epochs=1", "stage2.batch_size=8", "stage2.horizons_min=60,120", "stage2.context_scans=2",
          "stage2.device=cpu"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    for program, package in (("slurmctld", "slurm-wlm"), ("slurmd", "slurm-wlm"), ("sbatch", "slurm-wlm"),
                             ("munged", "munge")):
        needs_program(program, package=package)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(slurm):
    """A failed test's jobs must not hold the node's CPUs through the next test."""
    yield
    subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], env=slurm.env, capture_output=True)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory, tiny_prepared):
    root = tmp_path_factory.mktemp("slurm_runs")
    (root / "prepared").symlink_to(tiny_prepared)
    return root


def jobs_submit(slurm, runs_root: Path, name: str, *args: str, parse_overrides: bool = False,
                env: dict[str, str] | None = None):
    """jobs/submit CPU-only jobs of 2 CPUs each (the node has 4; later arguments win); `parse_overrides`: let it
    parse the overrides first (seconds: it imports torch), else the job does; `env`: more environment for the
    jobs (sbatch passes its own on). Its finished process."""
    env = {**slurm.env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "jobs" / "submit"), "--scheduler", "slurm", "--project", "test",
                           "--queue", "debug", "--walltime", "10", "--gpus-per-node", "0", "--cpus-per-node", "2",
                           "--runs-root", str(runs_root), "--name", name, *([] if parse_overrides else ["--no-check"]),
                           *args], env=env, capture_output=True, text=True, timeout=120)


def submit(slurm, runs_root: Path, name: str, *args: str, parse_overrides: bool = False,
           env: dict[str, str] | None = None) -> None:
    out = jobs_submit(slurm, runs_root, name, *args, parse_overrides=parse_overrides, env=env)
    assert out.returncode == 0, out.stderr


def refused(out: subprocess.CompletedProcess) -> str:
    """The one-line error of a jobs/submit that exited 2."""
    assert (out.returncode, len(out.stderr.strip().splitlines())) == (2, 1), out.stderr
    return out.stderr


def job_ids(runs_root: Path, name: str) -> dict[str, str]:
    record = json.loads((runs_root / name / "submit.json").read_text())
    return {stage: job["id"] for stage, job in record["jobs"].items()}


def job_log(runs_root: Path, name: str, stage: str, job: str) -> str:
    path = runs_root / name / "logs" / f"{stage}-{job}.out"
    return path.read_text(errors="replace") if path.is_file() else ""


def wait_for_text(slurm, job: str, path: Path, pattern: str, timeout: float) -> re.Match:
    """The first match of `pattern` in `path`, written by the running `job`."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, path.read_text(errors="replace")) if path.is_file() else None
        if m:
            return m
        state = slurm.job(job)["JobState"]
        assert state not in ENDED and time.monotonic() < deadline, f"{pattern!r} not in {path} (job {state})"
        time.sleep(0.3)


def when(info: dict[str, str], key: str) -> float:
    return time.mktime(time.strptime(info[key], "%Y-%m-%dT%H:%M:%S"))


def test_chain_runs_in_order_next_to_another_run_and_stage2_alone_follows_a_queued_stage1(slurm, runs_root):
    """Run a: stage 1 (one process), then stage 2 submitted alone while stage 1 is queued or running; run b:
    stage 1 with two CPU processes at the same time, on the same node (each job its own rendezvous port)."""
    submit(slurm, runs_root, "a", "stage1", "--", *STAGE1)
    submit(slurm, runs_root, "b", "--procs-per-node", "2", "stage1", "--", *STAGE1)
    a1 = job_ids(runs_root, "a")["stage1"]
    assert slurm.job(a1)["JobState"] in ("PENDING", "RUNNING"), "too late to test a dependency on a queued job"
    # No embeddings.parquet yet: it depends on a1. Given the node's 2 GPUs, stage 2 (one process) asks for one.
    submit(slurm, runs_root, "a", "--gpus-per-node", "2", "stage2", "--", *STAGE1, *STAGE2)
    a2, b1 = job_ids(runs_root, "a")["stage2"], job_ids(runs_root, "b")["stage1"]
    assert f"afterok:{a1}" in slurm.job(a2)["Dependency"] and slurm.job(a2)["TresPerNode"] == "gres:gpu:1"

    s2 = slurm.wait_job(a2, ENDED, 420)
    s1, b = slurm.job(a1), slurm.wait_job(b1, ENDED, 120)
    logs = "".join(job_log(runs_root, n, s, j) for n, s, j in (("a", "stage1", a1), ("a", "stage2", a2),
                                                                ("b", "stage1", b1)))[-4000:]
    for info in (s1, s2, b):
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), logs
    assert when(s2, "StartTime") >= when(s1, "EndTime")
    assert when(b, "StartTime") < when(s1, "EndTime") and when(s1, "StartTime") < when(b, "EndTime"), \
        "the two stage-1 jobs did not overlap"
    assert (runs_root / "a" / "stage2" / "scores.json").is_file()
    assert (runs_root / "a" / "stage2" / "report.html").is_file()
    world = json.loads((runs_root / "b" / "stage1" / "env.json").read_text())
    assert (world["world_size"], world["launcher"]) == (2, "torchrun")


def test_a_bad_override_fails_stage1_and_cancels_stage2(slurm, runs_root):
    """Submitted unchecked (--no-check, or a login node without the project): the job refuses it."""
    submit(slurm, runs_root, "bad", "stage1", "stage2", "--", *STAGE1, "stage1.batch_size=-4")
    ids = job_ids(runs_root, "bad")
    s1 = slurm.wait_job(ids["stage1"], ENDED, 120)
    log = job_log(runs_root, "bad", "stage1", ids["stage1"])
    assert s1["JobState"] == "FAILED" and s1["ExitCode"] != "0:0" and "batch_size" in log, log[-3000:]
    s2 = slurm.wait_job(ids["stage2"], ENDED, 15)  # not left pending with DependencyNeverSatisfied
    assert s2["JobState"] == "CANCELLED"


def stop_running(slurm, runs_root: Path, name: str, stage: str, job: str, signal_name: str, run: Path) -> int:
    """scancel --signal the job; asserts Slurm recorded exit 75 and a checkpoint in `run`; the step it was saved at."""
    subprocess.run(["scancel", f"--signal={signal_name}", job], env=slurm.env, check=True)
    info = slurm.wait_job(job, ENDED, 120)
    out = job_log(runs_root, name, stage, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "75:0"), out[-3000:]
    assert (run / "ckpt.pt").is_file()
    return int(re.search(r"saved \S+ at step (\d+)", out).group(1))


def test_a_stop_signal_checkpoints_exits_75_and_a_resubmission_resumes(slurm, runs_root):
    """scancel --signal reaches the training through srun and torchrun; Slurm records 75, resubmitting resumes
    at the checkpoint's step, and USR1 stops the resumed job the same way."""
    overrides = [*STAGE1, "stage1.epochs=500"]  # far longer than the test: it is stopped twice
    run, logs = runs_root / "stop" / "stage1", runs_root / "stop" / "logs"
    submit(slurm, runs_root, "stop", "stage1", "--", *overrides)
    first = job_ids(runs_root, "stop")["stage1"]
    wait_for_text(slurm, first, run / "log.jsonl", r"\n", 120)  # training steps are being logged
    stopped_at = stop_running(slurm, runs_root, "stop", "stage1", first, "TERM", run)
    assert stopped_at > 0

    submit(slurm, runs_root, "stop", "stage1", "--", *overrides)
    second = job_ids(runs_root, "stop")["stage1"]
    resumed = wait_for_text(slurm, second, logs / f"stage1-{second}.out", r"resuming \S+ at step (\d+)/", 120)
    assert int(resumed.group(1)) == stopped_at
    wait_for_text(slurm, second, logs / f"stage1-{second}.out", r"step (\d+)/\d+ loss", 120)  # training again
    assert stop_running(slurm, runs_root, "stop", "stage1", second, "USR1", run) > stopped_at


def test_a_stop_signal_reaches_stage2_training_a_one_process_step(slurm, runs_root):
    """Stage 2 runs as an `srun -n1` step: `scancel --signal` (job steps only) reached nobody in the batch shell."""
    stage1 = runs_root / "a" / "stage1"  # run a's, from the chain test; else a stage 1 of its own
    if not (stage1 / "embeddings.parquet").is_file():
        stage1 = runs_root / "s2stop" / "stage1"
        submit(slurm, runs_root, "s2stop", "stage1", "--", *STAGE1)
        assert slurm.wait_job(job_ids(runs_root, "s2stop")["stage1"], ENDED, 300)["JobState"] == "COMPLETED"
    submit(slurm, runs_root, "s2stop", "--stage1-run", str(stage1), "stage2", "--", *STAGE2, "stage2.epochs=500",
           "stage2.patience=500")  # no early stop: still training when the signal comes
    job = job_ids(runs_root, "s2stop")["stage2"]
    run = runs_root / "s2stop" / "stage2" / "detr"
    wait_for_text(slurm, job, run / "log.jsonl", r"\n", 120)
    assert stop_running(slurm, runs_root, "s2stop", "stage2", job, "TERM", run) > 0


@pytest.fixture
def held(slurm):
    """The partition DOWN: Slurm accepts jobs but starts none, so a test can read what it recorded for free."""
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], env=slurm.env, check=True)
    yield
    subprocess.run(["scancel", f"--user={os.getuid()}"], env=slurm.env, check=True)  # before they could start
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], env=slurm.env, check=True)


def queued(slurm) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i", f"--user={os.getuid()}"], env=slurm.env,
                         capture_output=True, text=True, check=True)
    return sorted(out.stdout.split(), key=int)


def recorded(slurm, job: str) -> dict[str, str]:
    """slurm.job, with the keys holding '/' too (CPUs/Task)."""
    return dict(re.findall(r"([\w/]+)=(\S*)", slurm.scontrol("show", "job", "-o", job)))


def test_cpus_per_node_become_cpus_per_task_and_the_default_takes_the_whole_node(slurm, runs_root, held):
    """Without --cpus-per-task Slurm gave each job one CPU, shared by every training process and loader."""
    submit(slurm, runs_root, "cpus", "--cpus-per-node", "3", "stage1", "stage2", "--", *STAGE1)
    for job in job_ids(runs_root, "cpus").values():  # CPU-only: stage 2 gets the node's share too
        info = recorded(slurm, job)
        assert (info["NumCPUs"], info["CPUs/Task"], info["OverSubscribe"]) == ("3", "3", "OK"), info
    submit(slurm, runs_root, "whole", "--cpus-per-node", "0", "stage1", "--", *STAGE1)
    assert recorded(slurm, job_ids(runs_root, "whole")["stage1"])["OverSubscribe"] == "NO"  # --exclusive


def test_a_submission_sbatch_refuses_leaves_the_name_free(slurm, runs_root, held):
    """submit.json was written before sbatch ran: the corrected retry was refused for changed overrides."""
    out = jobs_submit(slurm, runs_root, "retry", "--queue", "nosuch", "stage1", "--", *STAGE1, "stage1.batch_size=4")
    assert out.returncode == 2 and "invalid partition" in out.stderr.lower(), out.stderr
    assert not (runs_root / "retry" / "submit.json").exists() and queued(slurm) == []
    submit(slurm, runs_root, "retry", "stage1", "--", *STAGE1)
    assert queued(slurm) == [job_ids(runs_root, "retry")["stage1"]]


def test_a_second_submit_while_stage1_is_queued_is_refused_unless_forced(slurm, runs_root, held):
    """Two stage-1 jobs training in one folder would overwrite each other's checkpoints."""
    submit(slurm, runs_root, "twice", "stage1", "--", *STAGE1)
    first = job_ids(runs_root, "twice")["stage1"]
    assert f"stage1 {first}" in refused(jobs_submit(slurm, runs_root, "twice", "stage1", "--", *STAGE1))
    assert queued(slurm) == [first] and job_ids(runs_root, "twice")["stage1"] == first
    submit(slurm, runs_root, "twice", "--force", "stage1", "--", *STAGE1)
    second = job_ids(runs_root, "twice")["stage1"]
    assert queued(slurm) == [first, second]
    history = json.loads((runs_root / "twice" / "submit.json").read_text())["history"]
    assert [h["id"] for h in history] == [first, second]  # the first job is not forgotten


def test_the_grace_signal_reaches_sbatch_and_bad_values_are_refused_before_queueing(slurm, runs_root, held):
    """sbatch parses `--signal=TERM@N` (it refuses N > 65535); Slurm 22.05 shows no signal in `scontrol show job`,
    so the script it stores is read back. A bad --grace or train override is refused by jobs/submit itself."""
    submit(slurm, runs_root, "grace", "--grace", "65535", "stage1", "--", *STAGE1)
    job = job_ids(runs_root, "grace")["stage1"]
    script = slurm.scontrol("write", "batch_script", job, "-")
    assert "#SBATCH --signal=TERM@65535\n" in script and queued(slurm) == [job]
    assert "--grace" in refused(jobs_submit(slurm, runs_root, "grace2", "--grace", "65536", "stage1"))
    assert "batch_size" in refused(jobs_submit(slurm, runs_root, "grace2", "stage1", "--", *STAGE1,
                                               "stage1.batch_size=-4", parse_overrides=True))
    assert queued(slurm) == [job] and not (runs_root / "grace2" / "submit.json").exists()


def array_tasks(slurm, job: str) -> list[dict[str, str]]:
    """`scontrol show job -o` of a job array: one record per task."""
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in slurm.scontrol("show", "job", "-o", job).splitlines()
            if line.strip()]


def test_compare_runs_stage1_once_the_stage2_runs_as_an_array_and_the_reports_after_them(slurm, tmp_path_factory,
                                                                                          monkeypatch):
    """`jobs/submit ... compare` on two downloaded-layout nodes, one held out: the comparison of sagecast-compare
    --raw as jobs. The generator's truth files are garbage: a job that read one would fail."""
    from data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("slurm_compare")
    registry = json.loads((REPO / "data" / "sage" / "nodes.json").read_text())
    registry["W099"] = [{"from": None, "to": None, "lat": 41.70, "lon": -87.99, "elevation_m": 220.0,
                         "tz": "America/Chicago", "source": "a test node"}]
    (root / "nodes.json").write_text(json.dumps(registry))
    env = {"SAGECAST_NODES": str(root / "nodes.json")}
    monkeypatch.setenv("SAGECAST_NODES", env["SAGECAST_NODES"])  # the generator places the nodes through it too
    generate(root / "raw", nodes=["W056", "W099"], start="2023-06-01", days=3, interval_min=60, seed=0,
             size="small", fault_rate=0.0, progress=False)
    for vsn in ("W056", "W099"):
        (root / "raw" / vsn / "truth.parquet").write_bytes(b"not parquet: reading the synthetic truth fails")
    runs = root / "runs"
    submit(slurm, runs, "cmp", "--walltime", "30", "--raw", str(root / "raw"), "--compare-args",
           "--heldout-node W099 --seeds 0 --n-boot 20", "compare", "--", *STAGE1, *STAGE2, env=env)
    ids = job_ids(runs, "cmp")
    assert set(ids) == {"compare_stage1", "compare_stage2", "compare_report"}
    report = slurm.wait_job(ids["compare_report"], ENDED, 1500)
    stage1, tasks = slurm.job(ids["compare_stage1"]), array_tasks(slurm, ids["compare_stage2"])
    logs = "".join(p.read_text(errors="replace") for p in sorted((runs / "cmp" / "logs").iterdir()))[-4000:]
    for info in (stage1, *tasks, report):
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), logs
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"]
    assert all(when(t, "StartTime") >= when(stage1, "EndTime") for t in tasks)
    assert all(when(report, "StartTime") >= when(t, "EndTime") for t in tasks)  # afterok on the whole array
    assert sorted(p.name for p in (runs / "cmp" / "stage2").iterdir()) == ["detr_s0", "jepa_s0"]
    for name in ("report", "report_heldout"):
        scores = json.loads((runs / "cmp" / name / "scores.json").read_text())
        assert "synthetic oracles" in scores["not_on_real_data"] and "cloud_fraction_truth" not in scores
        assert all(lo <= row["skill_vs_persistence"] <= hi for row in scores["variants"]["detr"].values()
                   for lo, hi in [row["skill_ci"]])
    assert "not available on real data" in (runs / "cmp" / "report" / "report.html").read_text()

    submit(slurm, runs, "cmp", "--raw", str(root / "raw"), "--compare-args",
           "--heldout-node W099 --seeds 0 --n-boot 20", "compare", "--", *STAGE1, *STAGE2, env=env)
    again = job_ids(runs, "cmp")["compare_stage1"]  # resubmitted: every step finds its completion record
    assert slurm.wait_job(again, ENDED, 300)["JobState"] == "COMPLETED"
    log = job_log(runs, "cmp", "compare_stage1", again)
    assert log.count("done: ") == 6 and "run_stage.sh:" not in log, log[-2000:]  # no step was launched
