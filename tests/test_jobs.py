"""Batch jobs: jobs/submit against fake qsub/sbatch, and jobs/run_stage.sh against fake launchers.

The fakes are small scripts put first on PATH; they record their arguments and print a job id in the
scheduler's own format, so these tests check what a real scheduler would receive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "jobs" / "submit"
RUN_STAGE = REPO / "jobs" / "run_stage.sh"
SCHED = {  # scheduler -> (submit command, ids it prints for two submissions, id stage 2 must depend on)
    "cobalt": ("qsub", ["4242", "4243"], "4242"),
    "pbs": ("qsub", ["12345.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov", "12346.polaris-pbs-01"],
            "12345.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"),
    "slurm": ("sbatch", ["777;cluster1", "778;cluster1"], "777"),
}
DEPEND = {
    "cobalt": ["--dependencies", "4242"],
    "pbs": ["-W", "depend=afterok:12345.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"],
    "slurm": ["--dependency=afterok:777", "--kill-on-invalid-dep=yes"],
}
FAKE = """#!{python}
import json, os, sys
log = os.environ["FAKE_LOG"]
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
with open(log, "a") as f:
    f.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd(),
                        "master_addr": os.environ.get("MASTER_ADDR")}}) + "\\n")
ids = os.environ.get("FAKE_IDS", "").split()
if ids:
    print(ids[n])
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""
# squeue/qstat: the job ids in FAKE_ACTIVE are queued or running, any other is unknown (both exit non-zero).
FAKE_QUERY = """#!{python}
import os, sys
job = [a.split("=", 1)[1] if a.startswith("--jobs=") else a for a in sys.argv[1:] if not a.startswith("-")
       or a.startswith("--jobs=")][-1]
if job not in os.environ.get("FAKE_ACTIVE", "").split():
    sys.exit(1)
print(job + " sagecast user 00:01 R")
"""


def fake_bin(tmp_path: Path, *names: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A PATH with recording fakes for `names` first; returns the environment to run with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {n: FAKE_QUERY.format(python=sys.executable) for n in ("squeue", "qstat")}
    scripts |= {n: FAKE.format(python=sys.executable) for n in names} | (extra or {})
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBS_", "COBALT_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}", FAKE_LOG=str(tmp_path / "calls.jsonl"))
    return env


def calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def submit(tmp_path, env, *args, check=True, parse_overrides=False):
    """jobs/submit with the fakes; `parse_overrides`: let it parse the train overrides (seconds: imports torch)."""
    (tmp_path / "runs" / "prepared").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "prepared" / "complete.json").touch()
    base = ["--project", "P", "--queue", "full-node", "--nodes", "2", "--runs-root", str(tmp_path / "runs")]
    base += [] if parse_overrides else ["--no-check"]
    out = subprocess.run([sys.executable, str(SUBMIT), *base, *args], env=env, capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def check_scripts(*paths: Path) -> None:
    for path in paths:
        subprocess.run(["bash", "-n", str(path)], check=True)
        if shutil.which("shellcheck"):
            out = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
            assert out.returncode == 0, out.stdout


def test_launcher_script_is_clean():
    check_scripts(RUN_STAGE)
    assert os.access(RUN_STAGE, os.X_OK) and os.access(SUBMIT, os.X_OK)


@pytest.mark.parametrize("scheduler", sorted(SCHED))
def test_stage2_waits_for_stage1_job_id(tmp_path, scheduler):
    prog, ids, stage1_id = SCHED[scheduler]
    env = fake_bin(tmp_path, prog) | {"FAKE_IDS": " ".join(ids)}
    out = submit(tmp_path, env, "--scheduler", scheduler, "--name", "r1", "stage1", "stage2", "--", "epochs=3")
    run = tmp_path / "runs" / "r1"
    ext = {"cobalt": "cobalt", "pbs": "pbs", "slurm": "sbatch"}[scheduler]
    s1, s2 = run / f"stage1.{ext}", run / f"stage2.{ext}"
    first, second = calls(tmp_path)
    assert first["argv"][-1] == str(s1) and second["argv"][-1] == str(s2)
    assert first["cwd"] == second["cwd"] == str(REPO)
    for flag in DEPEND[scheduler]:
        assert flag in second["argv"] and flag not in first["argv"]
    if scheduler == "slurm":
        assert first["argv"][0] == second["argv"][0] == "--parsable"
    assert stage1_id in out.stdout
    for script in (s1, s2):
        assert script.stat().st_mode & stat.S_IXUSR
    check_scripts(s1, s2)
    record = json.loads((run / "submit.json").read_text())
    assert record["scheduler"] == scheduler and record["jobs"]["stage1"]["id"] == stage1_id
    assert record["overrides"] == {"stage1": ["epochs=3"], "stage2": ["epochs=3"]}
    assert len(record["git"]["commit"] or "x" * 40) == 40 and record["time_utc"].endswith("Z")


def test_cobalt_directives_directly_follow_shebang(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "1 2"}
    submit(tmp_path, env, "--scheduler", "cobalt", "--name", "c", "--walltime", "90", "stage1")
    lines = (tmp_path / "runs" / "c" / "stage1.cobalt").read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    end = lines.index("")
    header = lines[1:end]
    assert header and all(x.startswith("#COBALT ") for x in header)
    assert not any(x.startswith("#COBALT") for x in lines[end:]), "directives after a blank line are ignored"
    for want in ("-n 2", "-t 01:30:00", "-q full-node", "-A P", "--attrs filesystems=home,eagle"):
        assert f"#COBALT {want}" in header


def test_pbs_header(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "1.pbs 2.pbs"}
    submit(tmp_path, env, "--scheduler", "pbs", "--name", "p", "--system", "polaris", "stage1")
    text = (tmp_path / "runs" / "p" / "stage1.pbs").read_text()
    for want in ("#PBS -l select=2:system=polaris", "#PBS -l walltime=06:00:00", "#PBS -l filesystems=home:eagle",
                 "#PBS -A P", "#PBS -q full-node", 'cd "$PBS_O_WORKDIR"'):
        assert want in text
    assert "jobs/run_stage.sh --nproc 4" in text


def test_slurm_script_has_no_pbs_lines(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6"}
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "s", "--gpus-per-node", "8", "stage1", "stage2")
    for stage in ("stage1", "stage2"):
        lines = (tmp_path / "runs" / "s" / f"{stage}.sbatch").read_text().splitlines()
        assert not any(x.startswith(("#PBS", "#COBALT")) for x in lines)
        assert "#SBATCH --account=P" in lines and "#SBATCH --ntasks-per-node=1" in lines
        assert "#SBATCH --time=06:00:00" in lines and "#SBATCH --exclusive" in lines
    stage1, stage2 = ((tmp_path / "runs" / "s" / f"{s}.sbatch").read_text() for s in ("stage1", "stage2"))
    assert "#SBATCH --nodes=2" in stage1 and "#SBATCH --gpus-per-node=8" in stage1
    assert "#SBATCH --nodes=1" in stage2 and "#SBATCH --gpus-per-node=1" in stage2, "stage 2 runs one process"


def test_dry_run_submits_and_writes_nothing(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "1 2"}
    out = submit(tmp_path, env, "--scheduler", "pbs", "--name", "d", "--dry-run", "stage1", "stage2")
    assert calls(tmp_path) == [] and not (tmp_path / "runs" / "d").exists()
    assert "#PBS -l select=2:system=polaris" in out.stdout and "sagecast-stage2-evaluate" in out.stdout
    assert "qsub -W depend=afterok:STAGE1_JOB_ID" in out.stdout


@pytest.mark.parametrize("flag, value", [("--project", "P\necho owned"), ("--queue", "prod\n#PBS -l x=1"),
                                         ("--queue", "a b"), ("--filesystems", "home\rx"), ("--system", "po:laris"),
                                         ("--runs-root", "my runs")])
def test_values_that_would_break_a_directive_are_refused_before_anything_happens(tmp_path, flag, value):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "1 2"}
    out = submit(tmp_path, env, "--scheduler", "pbs", "--name", "d", flag, value, "stage1", check=False)
    assert out.returncode == 2 and flag in out.stderr and "directive" in out.stderr
    assert calls(tmp_path) == [] and not (tmp_path / "runs" / "d").exists()


def test_overrides_reach_the_train_commands_of_their_stage(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6"}
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "o", "stage1", "stage2",
           "--", "seed=3", "stage1.epochs=2", "stage2.lr=0.5")
    s1 = (tmp_path / "runs" / "o" / "stage1.sbatch").read_text()
    s2 = (tmp_path / "runs" / "o" / "stage2.sbatch").read_text()
    train1 = next(x for x in s1.splitlines() if "sagecast-stage1-train" in x)
    assert train1.endswith("seed=3 epochs=2") and "lr=" not in s1
    assert all(x.endswith("seed=3 lr=0.5") for x in s2.splitlines() if "sagecast-stage2-train" in x)
    bad = submit(tmp_path, env, "--scheduler", "slurm", "--name", "o2", "stage1", "--", "run_dir=/x", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("jobs/submit: error: ") and "run_dir" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_stage2_alone_needs_embeddings_and_has_no_dependency(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "9"}
    missing = submit(tmp_path, env, "--scheduler", "cobalt", "--name", "a", "stage2", check=False)
    assert missing.returncode != 0 and "embeddings.parquet" in missing.stderr and calls(tmp_path) == []
    (tmp_path / "runs" / "a" / "stage1").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "stage1" / "embeddings.parquet").touch()
    submit(tmp_path, env, "--scheduler", "cobalt", "--name", "a", "stage2")
    (only,) = calls(tmp_path)
    assert only["argv"] == [str(tmp_path / "runs" / "a" / "stage2.cobalt")]


def test_failed_or_unreadable_stage1_submission_stops_stage2(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "1 2", "FAKE_RC": "1"}
    out = submit(tmp_path, env, "--scheduler", "cobalt", "--name", "f", "stage1", "stage2", check=False)
    assert out.returncode != 0 and len(calls(tmp_path)) == 1
    env |= {"FAKE_RC": "0", "FAKE_IDS": "queue-is-closed x"}
    out = submit(tmp_path, env, "--scheduler", "cobalt", "--name", "g", "stage1", "stage2", check=False)
    assert out.returncode != 0 and "job id" in out.stderr and len(calls(tmp_path)) == 2


def test_resubmitting_resumes_but_refuses_changed_overrides(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6 7"}
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "r", "stage1", "--", "epochs=4")
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "r", "stage1", "--", "epochs=4")
    record = json.loads((tmp_path / "runs" / "r" / "submit.json").read_text())
    assert [h["id"] for h in record["history"]] == ["5", "6"]
    changed = submit(tmp_path, env, "--scheduler", "slurm", "--name", "r", "stage1", "--", "epochs=5", check=False)
    assert changed.returncode != 0 and "--force" in changed.stderr and len(calls(tmp_path)) == 2


def run_stage(env, *args):
    return subprocess.run(["bash", str(RUN_STAGE), *args], env=env, capture_output=True, text=True, cwd=REPO)


def test_pbs_starts_one_torchrun_per_node_with_c10d(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")  # PBS repeats a host once per chunk
    env = fake_bin(tmp_path, "mpiexec") | {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "99.pbs", "FAKE_RC": "7"}
    out = run_stage(env, "--nproc", "4", "--", "sagecast-stage1-train", "epochs=1")  # console name -> module
    assert out.returncode == 7, "the launcher's exit status is the job's"
    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[:6] == ["-n", "2", "--ppn", "1", "--hostfile", str(nodefile)]
    tail = " ".join(argv)
    for want in ("torch.distributed.run --nnodes 2 --nproc-per-node 4", "--rdzv-backend c10d",
                 "--rdzv-endpoint n1:29599", "--rdzv-id 99.pbs", "-m stage1_jea.train epochs=1"):
        assert want in tail


def test_cobalt_mpi_mode_is_one_rank_per_gpu(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("gpu7\ngpu8\n")
    env = fake_bin(tmp_path, "mpirun") | {"COBALT_NODEFILE": str(nodefile), "COBALT_JOBID": "11"}
    out = run_stage(env, "--mpi", "--nproc", "8", "--", "stage1_jea.train")
    assert out.returncode == 0, out.stderr
    (call,) = calls(tmp_path)
    assert call["argv"][:6] == ["-n", "16", "-npernode", "8", "-hostfile", str(nodefile)]
    assert call["argv"][-3:] == ["python", "-m", "stage1_jea.train"] and "torch.distributed.run" not in call["argv"]
    assert call["master_addr"] == "gpu7" and "MASTER_ADDR" in call["argv"]


@pytest.mark.parametrize("with_scontrol", [True, False])
def test_slurm_uses_srun_and_the_first_host(tmp_path, with_scontrol):
    extra = {"scontrol": "#!/bin/bash\nprintf 'nid003\\nnid004\\n'\n"} if with_scontrol else {}
    env = fake_bin(tmp_path, "srun", extra=extra) | {"SLURM_JOB_NODELIST": "nid[003-004]", "SLURM_JOB_ID": "5",
                                                      "SLURM_JOB_NUM_NODES": "2"}
    if not with_scontrol:  # a PATH with only what the launcher needs, so a real scontrol stays out of sight
        tools = tmp_path / "tools"
        tools.mkdir()
        for name in ("bash", "sed", "awk", "mktemp", "cksum", "cut", "rm"):
            (tools / name).symlink_to(shutil.which(name))
        env["PATH"] = f"{tmp_path / 'bin'}:{tools}"
    out = run_stage(env, "--nproc", "2", "--", "m")
    assert out.returncode == 0, out.stderr
    argv = " ".join(calls(tmp_path)[0]["argv"])
    assert argv.startswith("--nodes 2 --ntasks 2 --ntasks-per-node 1")
    assert "--rdzv-endpoint nid003:29505" in argv and "--rdzv-id 5" in argv


def test_container_wraps_the_python_process(tmp_path):
    env = fake_bin(tmp_path, "apptainer")
    out = run_stage(env, "--single", "--container", "/img/s.sif", "--bind", "/data", "--",
                    "stage1_jea.export", "--run", "R")
    assert out.returncode == 0, out.stderr
    assert calls(tmp_path)[0]["argv"] == ["exec", "--nv", "-B", "/data", "/img/s.sif", "python", "-m",
                                          "stage1_jea.export", "--run", "R"]


def test_failing_stage_fails_the_launcher(tmp_path):
    (tmp_path / "failing_stage.py").write_text("import sys\nsys.exit(3)\n")
    env = fake_bin(tmp_path) | {"PYTHONPATH": str(tmp_path), "PYTHON": sys.executable}
    assert run_stage(env, "--single", "--", "failing_stage").returncode == 3
    out = run_stage(env, "--local", "--nproc", "2", "--", "failing_stage")
    assert out.returncode != 0 and "failing_stage" in out.stderr
    assert run_stage(env, "--local").returncode == 2 and run_stage(env, "--nproc", "0", "--", "m").returncode == 2



def def_sections(text: str) -> dict[str, str]:
    """Apptainer definition file sections: {'%post': body, ...} (the header under '')."""
    out, name = {"": ""}, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("%"):
            name = line.split()[0]
            out[name] = ""
        else:
            out[name] += line
    return out


def test_container_definition(tmp_path):
    sections = def_sections((REPO / "jobs" / "sagecast.def").read_text())
    assert "Bootstrap: docker" in sections[""]
    assert re.search(r"^From: nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3$", sections[""], re.M)
    copied = {line.split()[0] for line in sections["%files"].splitlines() if line.strip()}
    packages = {p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name not in ("tests", "benchmarks")}
    assert packages | {"pyproject.toml"} <= copied, "every installed package must be copied into the image"
    for name in ("%post", "%runscript"):
        script = tmp_path / f"{name[1:]}.sh"
        script.write_text("#!/bin/sh\n" + sections[name])
        check_scripts(script)
    assert "-c /opt/sagecast/torch-constraints.txt" in sections["%post"]
    # %test runs in the image; here it checks the same imports and forward pass against the checkout
    snippet = sections["%test"].split("<<'PY'\n", 1)[1].rsplit("PY\n", 1)[0]
    out = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "sagecast image OK" in out.stdout, out.stderr
    assert "- -e ." in (REPO / "environment.yml").read_text()

@pytest.mark.slow
def test_two_process_stage1_through_the_launcher(tmp_path, tiny_prepared):
    """torchrun --standalone with 2 CPU processes (gloo), as a job would start it: exit 0 and a checkpoint."""
    from tests.fixtures_stage1 import TINY

    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in {**TINY, "epochs": 1}.items()]
    env = fake_bin(tmp_path) | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = run_stage(env, "--local", "--nproc", "2", "--", "stage1_jea.train", "--preset", "quick",
                    f"prepared={tiny_prepared}", f"run_dir={run}", *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "ckpt.pt").is_file() and (run / "encoders.pt").is_file()
    info = json.loads((run / "env.json").read_text())
    assert (info["world_size"], info["launcher"]) == (2, "torchrun")


def test_progress_bars_refresh_once_a_minute_in_batch_logs(tmp_path):
    (tmp_path / "show_tqdm.py").write_text("import os\nprint(os.environ.get('TQDM_MININTERVAL'))\n")
    env = fake_bin(tmp_path) | {"PYTHONPATH": str(tmp_path), "PYTHON": sys.executable}
    env.pop("TQDM_MININTERVAL", None)
    assert run_stage(env, "--single", "--", "show_tqdm").stdout.strip() == "60"  # stderr is a pipe here
    env["TQDM_MININTERVAL"] = "5"
    assert run_stage(env, "--single", "--", "show_tqdm").stdout.strip() == "5"


def test_unknown_console_name_is_refused_before_launching(tmp_path):
    env = fake_bin(tmp_path, "mpiexec")
    out = run_stage(env, "--local", "--", "sagecast-stage3-train")
    assert out.returncode == 2 and "unknown tool 'sagecast-stage3-train'" in out.stderr and not calls(tmp_path)


def one_line_exit_2(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("jobs/submit: error: "), out.stderr
    return lines[0]


def test_unbalanced_quote_in_prepare_args_is_one_line(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5"}
    out = submit(tmp_path, env, "--scheduler", "slurm", "--name", "q", "--raw", str(tmp_path), "--prepare-args",
                 "--size '64", "stage1", check=False)
    assert "--prepare-args" in one_line_exit_2(out) and calls(tmp_path) == []


def test_corrupt_submit_record_is_one_line(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5"}
    (tmp_path / "runs" / "bad").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "submit.json").write_text('{"overrides": {"stage1": [')  # torn by a full disk
    out = submit(tmp_path, env, "--scheduler", "slurm", "--name", "bad", "stage1", check=False)
    assert "submit.json" in one_line_exit_2(out) and calls(tmp_path) == []


@pytest.mark.parametrize("override", ["run_dir=/x", "--run-dir=/x", "--run_dir=/x", "stage1.--prepared=/x",
                                      "stage2.stage1-run=/x", "stage2.variant=jepa", "--preset=full"])
def test_overrides_of_what_submit_sets_are_refused_in_every_spelling(tmp_path, override):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6"}
    out = submit(tmp_path, env, "--scheduler", "slurm", "--name", "o", "stage1", "stage2", "--", override,
                 check=False)
    assert "set by jobs/submit" in one_line_exit_2(out) and calls(tmp_path) == []


def test_percent_in_a_path_that_reaches_a_directive_is_refused(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5"}
    out = subprocess.run([sys.executable, str(SUBMIT), "--project", "P", "--queue", "q", "--scheduler", "slurm",
                          "--runs-root", str(tmp_path / "runs%j"), "--name", "p", "--raw", str(tmp_path), "stage1"],
                         env=env, capture_output=True, text=True)
    assert "--runs-root" in one_line_exit_2(out) and "directive" in out.stderr
    assert calls(tmp_path) == [] and not (tmp_path / "runs%j").exists()


def test_a_failed_submission_records_nothing(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6", "FAKE_RC": "1"}
    failed = submit(tmp_path, env, "--scheduler", "slurm", "--name", "f", "stage1", "--", "epochs=4", check=False)
    assert failed.returncode != 0 and not (tmp_path / "runs" / "f" / "submit.json").exists()
    env["FAKE_RC"] = "0"  # the scheduler is back: other overrides under the same name are not refused
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "f", "stage1", "--", "epochs=5")
    record = json.loads((tmp_path / "runs" / "f" / "submit.json").read_text())
    assert record["overrides"] == {"stage1": ["epochs=5"]} and record["jobs"]["stage1"]["id"] == "6"


def test_stage2_alone_needs_the_prepared_folder_its_report_shows(tmp_path):
    env = fake_bin(tmp_path, "qsub") | {"FAKE_IDS": "9"}
    stage1 = tmp_path / "elsewhere" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "embeddings.parquet").touch()
    out = submit(tmp_path, env, "--scheduler", "pbs", "--name", "s2", "--stage1-run", str(stage1), "--prepared",
                 str(tmp_path / "nope"), "stage2", check=False)
    assert "--prepared" in one_line_exit_2(out) and calls(tmp_path) == []


ONE_HOST = {"scontrol": "#!/bin/bash\necho n1\n"}  # `scontrol show hostnames n1`


def test_rendezvous_port_comes_from_the_job_id(tmp_path):
    """Two jobs on one node must not meet in one rendezvous (a fixed 29500 did: the second joined the first)."""
    ports = []
    for job in ("41", "42", "4242424242424"):
        env = fake_bin(tmp_path, "srun", extra=ONE_HOST) | {"SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": job,
                                                             "FAKE_LOG": str(tmp_path / f"{job}.jsonl")}
        env.pop("MASTER_PORT", None)
        assert run_stage(env, "--nproc", "2", "--", "m").returncode == 0
        argv = json.loads((tmp_path / f"{job}.jsonl").read_text())["argv"]
        ports.append(int(argv[argv.index("--rdzv-endpoint") + 1].split(":")[1]))
    assert len(set(ports)) == 3 and all(1024 < p < 65536 for p in ports)
    env |= {"FAKE_LOG": str(tmp_path / "fixed.jsonl")}
    assert run_stage(env, "--port", "31000", "--nproc", "2", "--", "m").returncode == 0
    assert "n1:31000" in (tmp_path / "fixed.jsonl").read_text()


def test_single_steps_run_as_a_slurm_job_step_with_the_jobs_cpus(tmp_path):
    """`scancel --signal` signals job steps, not the batch shell: a step started without srun never heard it."""
    env = fake_bin(tmp_path, "srun", extra=ONE_HOST) | {"SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "8",
                                                         "SLURM_CPUS_PER_TASK": "6"}
    assert run_stage(env, "--single", "--", "stage1_jea.export", "--run", "R").returncode == 0
    argv = calls(tmp_path)[0]["argv"]
    assert argv[:9] == ["--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                        "--cpus-per-task", "6"]
    assert argv[-5:] == ["python", "-m", "stage1_jea.export", "--run", "R"]
    # a whole-node job (--exclusive) has no SLURM_CPUS_PER_TASK: the node's CPUs are shared out among the ranks
    env = env | {"SLURM_CPUS_ON_NODE": "32", "FAKE_LOG": str(tmp_path / "mpi.jsonl")}
    del env["SLURM_CPUS_PER_TASK"]
    assert run_stage(env, "--mpi", "--nproc", "4", "--", "stage1_jea.train").returncode == 0
    argv = json.loads((tmp_path / "mpi.jsonl").read_text())["argv"]
    assert argv[argv.index("--cpus-per-task") + 1] == "8" and argv[argv.index("--ntasks-per-node") + 1] == "4"


WORKER = """import os, signal, sys, time
def stop(signum, frame):  # what the training does: checkpoint, leave the marker, exit 75
    open(os.environ["SAGECAST_STOP_MARKER"], "w").close()
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
open(sys.argv[1] + "." + os.environ.get("RANK", "0"), "w").close()
time.sleep(120)
"""


def start_worker_launch(tmp_path, *launch):
    (tmp_path / "stopping_worker.py").write_text(WORKER)
    env = fake_bin(tmp_path) | {"PYTHONPATH": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["bash", str(RUN_STAGE), *launch, "--", "stopping_worker", str(tmp_path / "up")],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    n = 2 if "--nproc" in launch else 1
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("up.*"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_stop_signal_through_torchrun_ends_the_launcher_with_75(tmp_path, sig):
    """torchrun turns a worker's 75 into 1 and (by default) dies of SIGUSR1; the launcher must report 75."""
    proc = start_worker_launch(tmp_path, "--local", "--nproc", "2")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]


def test_a_stop_signal_to_a_single_step_launcher_is_forwarded_and_waited_for(tmp_path):
    proc = start_worker_launch(tmp_path, "--single")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err


def test_ctrl_c_still_reaches_a_single_step(tmp_path):
    """The launcher runs the tool in the background to forward signals; Ctrl-C (SIGINT) must still stop it."""
    (tmp_path / "sigint_state.py").write_text("import signal\nprint(signal.getsignal(signal.SIGINT))\n")
    env = fake_bin(tmp_path) | {"PYTHONPATH": str(tmp_path), "PYTHON": sys.executable}
    # As from a terminal: SIGINT at its default when the launcher starts. A test runner that was itself started in
    # the background inherits it ignored, and an ignored SIGINT stays ignored in every child (so says POSIX).
    out = subprocess.run(["bash", str(RUN_STAGE), "--single", "--", "sigint_state"], env=env, capture_output=True,
                         text=True, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "default_int_handler" in out.stdout, out.stderr


def test_cpu_only_jobs_set_processes_apart_from_gpus(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6 7 8 9"}
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "cpu", "--gpus-per-node", "0", "--procs-per-node", "2",
           "--cpus-per-node", "8", "stage1", "stage2")
    for stage in ("stage1", "stage2"):
        text = (tmp_path / "runs" / "cpu" / f"{stage}.sbatch").read_text()
        assert "--gpus-per-node" not in text and "#SBATCH --cpus-per-task=8" in text and "--exclusive" not in text
    assert "jobs/run_stage.sh --nproc 2" in (tmp_path / "runs" / "cpu" / "stage1.sbatch").read_text()
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "mpi", "--gpus-per-node", "4", "--mpi",
           "--cpus-per-node", "32", "stage1")
    text = (tmp_path / "runs" / "mpi" / "stage1.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --cpus-per-task=8" in text
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "s2", "--gpus-per-node", "4", "--cpus-per-node", "32",
           "stage1", "stage2")
    text = (tmp_path / "runs" / "s2" / "stage2.sbatch").read_text()  # one GPU and its share of the CPUs
    assert "#SBATCH --gpus-per-node=1" in text and "#SBATCH --cpus-per-task=8" in text
    bad = submit(tmp_path, env, "--scheduler", "slurm", "--name", "neg", "--gpus-per-node", "-1", "stage1",
                 check=False)
    assert "cannot be negative" in one_line_exit_2(bad)


@pytest.mark.parametrize("grace, want", [(None, "#SBATCH --signal=TERM@120"), ("300", "#SBATCH --signal=TERM@300"),
                                         ("0", None)])
def test_slurm_jobs_get_a_stop_signal_before_the_wall_time(tmp_path, grace, want):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6"}
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "g", *(["--grace", grace] if grace else []),
           "stage1", "stage2")
    for stage in ("stage1", "stage2"):
        lines = (tmp_path / "runs" / "g" / f"{stage}.sbatch").read_text().splitlines()
        assert [x for x in lines if x.startswith("#SBATCH --signal")] == ([want] if want else [])


@pytest.mark.parametrize("scheduler", sorted(SCHED))
def test_resubmitting_while_the_runs_jobs_are_queued_is_refused_unless_forced(tmp_path, scheduler):
    """Two stage-1 jobs training in one folder overwrite each other's checkpoints."""
    prog, ids, stage1_id = SCHED[scheduler]
    env = fake_bin(tmp_path, prog) | {"FAKE_IDS": " ".join([*ids, "9", "10"])}
    submit(tmp_path, env, "--scheduler", scheduler, "--name", "twice", "stage1", "stage2")
    env["FAKE_ACTIVE"] = stage1_id
    again = submit(tmp_path, env, "--scheduler", scheduler, "--name", "twice", "stage1", "stage2", check=False)
    assert stage1_id in one_line_exit_2(again) and "--force" in again.stderr and len(calls(tmp_path)) == 2
    submit(tmp_path, env, "--scheduler", scheduler, "--name", "twice", "--force", "stage1")
    env["FAKE_ACTIVE"] = ""  # the jobs ended: resubmitting resumes
    submit(tmp_path, env, "--scheduler", scheduler, "--name", "twice", "stage1")
    assert len(calls(tmp_path)) == 4


@pytest.mark.parametrize("scheduler", sorted(SCHED))
def test_stage2_alone_depends_on_the_runs_stage1_job_still_queued(tmp_path, scheduler):
    prog, ids, stage1_id = SCHED[scheduler]
    env = fake_bin(tmp_path, prog) | {"FAKE_IDS": " ".join(ids)}
    submit(tmp_path, env, "--scheduler", scheduler, "--name", "later", "stage1")
    env["FAKE_ACTIVE"] = stage1_id  # no embeddings.parquet yet, but stage 1 is queued
    submit(tmp_path, env, "--scheduler", scheduler, "--name", "later", "stage2")
    second = calls(tmp_path)[1]["argv"]
    assert [x for x in DEPEND[scheduler] if x in second] == DEPEND[scheduler]
    record = json.loads((tmp_path / "runs" / "later" / "submit.json").read_text())
    assert set(record["jobs"]) == {"stage1", "stage2"}


@pytest.mark.slow
def test_overrides_are_parsed_before_anything_is_queued(tmp_path):
    """A bad override used to fail only inside the job, after the queue wait."""
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "5 6 7"}
    bad = submit(tmp_path, env, "--scheduler", "slurm", "--name", "b", "stage1", "stage2", "--", "stage2.epochs=0",
                 check=False, parse_overrides=True)
    line = one_line_exit_2(bad)
    assert "sagecast-stage2-train" in line and "epochs" in line and calls(tmp_path) == []
    assert not (tmp_path / "runs" / "b" / "submit.json").exists()
    submit(tmp_path, env, "--scheduler", "slurm", "--name", "g", "stage1", "stage2", "--", "epochs=2",
           "stage1.batch_size=8", parse_overrides=True)
    assert len(calls(tmp_path)) == 2
    # a login node without the project environment: submitted, the job parses them
    bare = submit(tmp_path, env | {"PYTHON": shutil.which("python3")}, "--scheduler", "slurm", "--name", "n",
                  "stage1", "--", "epochs=2", parse_overrides=True)
    assert "overrides not checked here" in bare.stderr and len(calls(tmp_path)) == 3


COMPARE_IDS = {  # ids the fake prints: stage 1, the stage-2 array (Cobalt: one job per run), the reports
    "slurm": ["800;c1", "801;c1", "802;c1"], "pbs": ["900.srv", "901[].srv", "902.srv"],
    "cobalt": ["4242", "4243", "4244", "4245"]}


@pytest.mark.parametrize("scheduler", sorted(SCHED))
def test_compare_is_stage1_once_then_a_stage2_array_then_the_reports(tmp_path, scheduler):
    prog = SCHED[scheduler][0]
    env = fake_bin(tmp_path, prog) | {"FAKE_IDS": " ".join(COMPARE_IDS[scheduler])}
    (tmp_path / "raw").mkdir()
    out = submit(tmp_path, env, "--scheduler", scheduler, "--name", "c", "--raw", str(tmp_path / "raw"),
                 "--compare-args", "--seeds 0 --n-boot 50", "compare", "--", "stage1.epochs=1", "stage2.epochs=1")
    run, ext = tmp_path / "runs" / "c", {"cobalt": "cobalt", "pbs": "pbs", "slurm": "sbatch"}[scheduler]
    submitted = [Path(c["argv"][-1]).name for c in calls(tmp_path)]
    trains = ["compare_stage2"] if scheduler != "cobalt" else ["compare_stage2_0", "compare_stage2_1"]
    assert submitted == [f"{k}.{ext}" for k in ("compare_stage1", *trains, "compare_report")], out.stdout
    scripts = {k: (run / f"{k}.{ext}").read_text() for k in ("compare_stage1", *trains, "compare_report")}
    check_scripts(*(run / f"{k}.{ext}" for k in scripts))

    stage1 = scripts["compare_stage1"]
    assert "sagecast-prepare --raw" in stage1 and "sagecast-stage1-train" in stage1 and "epochs=1" in stage1
    assert "sagecast-stage2-train" not in stage1 and "sagecast-synthetic" not in stage1
    runs = [line for k in trains for line in scripts[k].splitlines() if "sagecast-stage2-train" in line]
    assert sorted(re.search(r"--variant (\w+)", x).group(1) for x in runs) == ["detr", "jepa"]
    report = scripts["compare_report"]
    assert report.count("sagecast-stage2-evaluate") == 1 and "--real-data" in report and "sagecast-report" in report

    ids = [x.split(";")[0] for x in COMPARE_IDS[scheduler]]
    argv = [c["argv"] for c in calls(tmp_path)]
    assert not any("depend" in a for a in argv[0])  # stage 1 waits for nothing
    waits = {"slurm": [f"--dependency=afterok:{ids[0]}"], "pbs": [f"depend=afterok:{ids[0]}"],
             "cobalt": [ids[0]]}[scheduler]
    for train in argv[1:-1]:
        assert all(w in train for w in waits)
    last = {"slurm": f"--dependency=afterok:{ids[1]}", "pbs": f"depend=afterok:{ids[1]}",
            "cobalt": f"{ids[1]}:{ids[2]}"}[scheduler]  # Slurm and PBS: afterok on the array waits for every task
    assert last in argv[-1]
    if scheduler == "slurm":
        assert "#SBATCH --array=0-1" in scripts["compare_stage2"]
        assert 'case "${SLURM_ARRAY_TASK_ID}" in' in scripts["compare_stage2"]
        assert "#SBATCH --nodes=2" in stage1 and "#SBATCH --nodes=1" in scripts["compare_stage2"]
        assert "compare_stage2-%A_%a.out" in scripts["compare_stage2"]
    if scheduler == "pbs":
        assert "#PBS -J 0-1" in scripts["compare_stage2"] and '"${PBS_ARRAY_INDEX}"' in scripts["compare_stage2"]
    record = json.loads((run / "submit.json").read_text())
    assert [record["jobs"][k]["id"] for k in ("compare_stage1", *trains, "compare_report")] == ids
    assert record["overrides"]["compare"][:2] == ["--out", str(run)]


def test_compare_is_submitted_alone_and_checked_by_sagecast_compare(tmp_path):
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "1 2 3"}
    both = submit(tmp_path, env, "--scheduler", "slurm", "--name", "c", "stage1", "compare", check=False)
    assert both.returncode == 2 and "compare is submitted alone" in both.stderr
    (tmp_path / "raw" / "W056" / "rgb").mkdir(parents=True)  # a node folder without a single sky-preset pair
    env["PYTHON"] = sys.executable
    out = subprocess.run([sys.executable, str(SUBMIT), "--project", "P", "--queue", "q", "--scheduler", "slurm",
                          "--runs-root", str(tmp_path / "runs"), "--name", "c", "--raw", str(tmp_path / "raw"),
                          "compare"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no RGB–thermal pairs of sky presets" in out.stderr and calls(tmp_path) == []


def test_compare_refuses_a_run_folder_trained_with_other_inputs_before_queueing(tmp_path):
    """As sagecast-compare does locally: a stage-2 folder from before a change of inputs would be skipped as done
    by its job (its completion record exists) and reported as if trained with this comparison's inputs."""
    env = fake_bin(tmp_path, "sbatch") | {"FAKE_IDS": "800;c1 801;c1 802;c1"}
    (tmp_path / "raw").mkdir()
    stale = tmp_path / "runs" / "c" / "stage2" / "detr_s0"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"motion": "/elsewhere/raw", "features": "both", "advect": True}))
    args = ("--scheduler", "slurm", "--name", "c", "--raw", str(tmp_path / "raw"), "--compare-args", "--seeds 0",
            "compare")
    line = one_line_exit_2(submit(tmp_path, env, *args, check=False))
    assert str(stale) in line and "motion=/elsewhere/raw" in line and calls(tmp_path) == []
    assert not (tmp_path / "runs" / "c" / "submit.json").exists()
    (stale / "config.json").write_text(json.dumps({"motion": None, "features": "both", "advect": True}))
    submit(tmp_path, env, *args)  # the same inputs: the folder is this comparison's, resumed
    assert len(calls(tmp_path)) == 3
