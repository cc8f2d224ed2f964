"""Batch jobs: jobs/submit against fake qsub/sbatch, and jobs/run_stage.sh against fake launchers.

The fakes are small scripts put first on PATH; they record their arguments and print a job id in the
scheduler's own format, so these tests check what a real scheduler would receive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
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


def fake_bin(tmp_path: Path, *names: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A PATH with recording fakes for `names` first; returns the environment to run with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {n: FAKE.format(python=sys.executable) for n in names} | (extra or {})
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBS_", "COBALT_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}", FAKE_LOG=str(tmp_path / "calls.jsonl"))
    return env


def calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def submit(tmp_path, env, *args, check=True):
    (tmp_path / "runs" / "prepared").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "prepared" / "complete.json").touch()
    base = ["--project", "P", "--queue", "full-node", "--nodes", "2", "--runs-root", str(tmp_path / "runs")]
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
        assert "#SBATCH --gpus-per-node=8" in lines and "#SBATCH --time=06:00:00" in lines
    assert "#SBATCH --nodes=2" in (tmp_path / "runs" / "s" / "stage1.sbatch").read_text()
    assert "#SBATCH --nodes=1" in (tmp_path / "runs" / "s" / "stage2.sbatch").read_text()


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
                 "--rdzv-endpoint n1:29500", "--rdzv-id 99.pbs", "-m stage1_jea.train epochs=1"):
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
    if not with_scontrol and shutil.which("scontrol"):
        pytest.skip("a real scontrol is on PATH")
    extra = {"scontrol": "#!/bin/bash\nprintf 'nid003\\nnid004\\n'\n"} if with_scontrol else {}
    env = fake_bin(tmp_path, "srun", extra=extra) | {"SLURM_JOB_NODELIST": "nid[003-004]", "SLURM_JOB_ID": "5",
                                                      "SLURM_JOB_NUM_NODES": "2"}
    out = run_stage(env, "--nproc", "2", "--", "m")
    assert out.returncode == 0, out.stderr
    argv = " ".join(calls(tmp_path)[0]["argv"])
    assert argv.startswith("--nodes 2 --ntasks 2 --ntasks-per-node 1")
    assert "--rdzv-endpoint nid003:29500" in argv and "--rdzv-id 5" in argv


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
