"""The pipeline declared once (sagecast_pipeline): the Makefile targets, sagecast-compare and the job scripts run
the same commands; the declaration imports only the standard library; every step's record is written by its tool."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sagecast_pipeline.tools import TOOLS

REPO = Path(__file__).resolve().parents[1]


def test_the_pipeline_imports_only_the_standard_library():
    """jobs/submit imports it on bare login nodes: `python -S` has no site-packages at all."""
    code = ("import sys, sagecast_pipeline.steps, sagecast_pipeline.tools, sagecast_pipeline.run\n"
            "jobs = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names | {'__main__'})\n"
            "import sagecast_pipeline.compare, sagecast_pipeline.__main__\n"
            "rest = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names | {'__main__'})\n"
            "print(jobs); print(rest)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    jobs, rest = (eval(line) for line in out.stdout.splitlines())
    assert {m.split(".")[0] for m in jobs} == {"sagecast_pipeline"}, jobs
    # the command-line runners add the project's stdlib-only CLI helpers, nothing else
    assert {m.split(".")[0] for m in rest} == {"sagecast_pipeline", "sagecast_common"}, rest
    assert {m for m in rest if m.startswith("sagecast_common")} == {"sagecast_common", "sagecast_common.cli"}, rest


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml (read by hand: tomllib is Python >= 3.11, the project supports 3.10)."""
    text = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(\S+) = "([^"]+)"$', text, re.M))


def test_every_console_script_has_its_module_and_runs_the_same_entry_point():
    scripts = console_scripts()
    assert "sagecast-compare" in scripts and set(scripts) == set(TOOLS)
    for name, entry in scripts.items():
        module = entry.split(":")[0]
        # `python -m PACKAGE` runs PACKAGE/__main__.py, which must call the console script's module
        main = REPO / TOOLS[name].replace(".", "/") / "__main__.py"
        calls_it = main.is_file() and (module == f"{TOOLS[name]}.__main__" or module in main.read_text())
        assert TOOLS[name] == module or (module.startswith(TOOLS[name] + ".") and calls_it), (name, entry)


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagecast_pipeline", *args], cwd=REPO, capture_output=True, text=True)


def printed_commands(text: str) -> dict[str, list[str]]:
    """`--print` output -> {tool: argv} (the console script first); one command per tool in the chain."""
    out = {}
    for line in text.splitlines():
        if line.startswith("sagecast-"):
            argv = shlex.split(line)
            out.setdefault(argv[0], []).append(argv)
    return out


def job_commands(text: str) -> dict[str, list[str]]:
    """The `step RECORD "${launcher[@]}" -- TOOL ARGS` lines of the job scripts -> {tool: argv}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("step "):
            argv = shlex.split(line)
            tail = argv[argv.index("--") + 1:]
            out.setdefault(tail[0], []).append(tail)
    return out


def shape(argv: list[str]) -> list[str]:
    """An argv's grammar: its --options and key= names in order, without values."""
    return [a.split("=")[0] + "=" if "=" in a and not a.startswith("-") else a for a in argv if "=" in a
            or a.startswith("--")]


def test_make_compare_and_job_scripts_run_the_declared_commands(tmp_path):
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^data stage1 stage2: \| \$\(STAMP\)\n\t\$\(PIPELINE\) \$@$", makefile, re.M)
    assert "PIPELINE = $(PY) -m sagecast_pipeline --runs" in makefile
    assert "\t$(PY) -m sagecast_pipeline.compare --out $(RUNS)/compare $(COMPARE_ARGS)" in makefile

    runs = tmp_path / "runs" / "r"
    args = ["--runs", str(runs), "--stage1-args", "epochs=3", "--stage2-args", "epochs=3"]
    make = {}
    for target in ("stage1", "stage2"):
        out = pipeline(target, *args, "--print")
        assert out.returncode == 0, out.stderr
        make |= printed_commands(out.stdout)
    assert list(make) == ["sagecast-synthetic", "sagecast-prepare", "sagecast-stage1-train", "sagecast-stage1-export",
                          "sagecast-stage1-evaluate", "sagecast-stage2-train", "sagecast-stage2-evaluate",
                          "sagecast-report"]

    (runs / "prepared").mkdir(parents=True)
    (runs / "prepared" / "complete.json").touch()
    submit = subprocess.run([sys.executable, str(REPO / "jobs" / "submit"), "--scheduler", "slurm", "--project", "P",
                             "--queue", "q", "--runs-root", str(runs.parent), "--name", runs.name, "--prepared",
                             str(runs / "prepared"), "--raw", str(runs / "raw"), "--prepare-args", "--size 64",
                             "--dry-run", "stage1", "stage2", "--", "epochs=3"], capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr
    jobs = job_commands(submit.stdout)
    # the jobs run every step but the synthetic sky, with the same arguments in the same folders
    assert jobs == {tool: argv for tool, argv in make.items() if tool != "sagecast-synthetic"}

    out = subprocess.run([sys.executable, "-m", "sagecast_pipeline.compare", "--out", str(tmp_path / "c"), "--print"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    compare = printed_commands(out.stdout)
    plain = printed_commands(pipeline("stage1", "--runs", str(runs), "--print").stdout)
    plain |= printed_commands(pipeline("stage2", "--runs", str(runs), "--print").stdout)
    assert set(compare) == set(plain) == set(make)
    for tool, (argv, *_) in plain.items():
        # compare's graph uses the same tools with the same grammar, its own folders and a few more options
        for other in compare[tool]:
            assert shape(other)[:len(shape(argv))] == shape(argv), (tool, other, argv)


def test_stage2_before_stage1_names_the_target_that_makes_its_input(tmp_path):
    out = pipeline("stage2", "--runs", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"python -m sagecast_pipeline: error: {tmp_path}/stage1/embeddings.parquet not found: run `make stage1` first"]


def test_make_values_reach_the_tools_split_like_a_shell(tmp_path):
    out = pipeline("stage1", "--runs", str(tmp_path), "--synthetic-args", "--days 7 --seed '1'", "--stage1-args",
                   "epochs=2 note='a b'", "--print")
    commands = printed_commands(out.stdout)
    assert commands["sagecast-synthetic"][0][3:] == ["--days", "7", "--seed", "1"]
    assert commands["sagecast-stage1-train"][0][-2:] == ["epochs=2", "note=a b"]
    bad = pipeline("stage1", "--runs", str(tmp_path), "--prepare-args", "--size '64")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--prepare-args" in bad.stderr


def test_a_finished_step_is_skipped_and_an_unfinished_one_runs(tmp_path, monkeypatch, capsys):
    from sagecast_pipeline.run import run_steps
    from sagecast_pipeline.steps import Step

    (tmp_path / "touch_step.py").write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('ran')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(TOOLS, "sagecast-touch", "touch_step")
    done, todo, source = tmp_path / "a.done", tmp_path / "b.done", tmp_path / "encoders.pt"
    done.write_text("before")
    source.write_text("weights")
    steps = [Step("a", "sagecast-touch", (str(done),), done),
             Step("b", "sagecast-touch", (str(todo),), todo, copies=((source, tmp_path / "b" / "encoders.pt"),))]
    run_steps(steps, prog="t")
    assert done.read_text() == "before" and todo.read_text() == "ran"
    assert (tmp_path / "b" / "encoders.pt").read_text() == "weights"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"[t] a: done ({done})" and printed[1].startswith("[t] b: ") and "touch_step" in printed[1]


def test_a_refresh_step_is_redone_when_a_record_it_reads_is_newer(tmp_path, monkeypatch, capsys):
    """The HTML report is redrawn when a rerun adds to what it shows (e.g. a learning curve on a finished
    comparison); other finished steps are not, and a redone step that leaves its record untouched fails."""
    import os

    from sagecast_pipeline.run import StepFailed, run_steps
    from sagecast_pipeline.steps import Step

    (tmp_path / "touch_step.py").write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('ran')\n")
    (tmp_path / "idle_step.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(TOOLS, "sagecast-touch", "touch_step")
    monkeypatch.setitem(TOOLS, "sagecast-idle", "idle_step")
    curve, html, plain = tmp_path / "learning_curve.json", tmp_path / "report.html", tmp_path / "plain.done"
    for path, text, age in ((html, "old report", 100), (plain, "old", 100), (curve, "{}", 0)):
        path.write_text(text)
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    steps = [Step("html", "sagecast-touch", (str(html),), html, needs=(curve,), refresh=True),
             Step("plain", "sagecast-touch", (str(plain),), plain, needs=(curve,))]
    run_steps(steps, prog="t")
    assert html.read_text() == "ran" and plain.read_text() == "old"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[t] html: redone") and printed[-1] == f"[t] plain: done ({plain})"
    run_steps(steps, prog="t")  # now newer than what it reads: done
    assert capsys.readouterr().out.splitlines()[0] == f"[t] html: done ({html})"

    os.utime(html, (html.stat().st_atime - 100, html.stat().st_mtime - 100))
    with pytest.raises(StepFailed, match="without writing its completion record"):
        run_steps([Step("html", "sagecast-idle", (), html, needs=(curve,), refresh=True)], prog="t")


def test_synthetic_writes_its_completion_record_last(tmp_path, monkeypatch):
    from data.synthetic import generate

    raw = tmp_path / "raw"
    summary = generate.generate(raw, hours=0.5, interval_min=15, workers=1, progress=False)
    record = json.loads((raw / ".complete").read_text())
    assert record["captures"] == summary["captures"] > 0
    assert (raw / ".complete").stat().st_mtime_ns >= (raw / "W056" / ".synthetic.json").stat().st_mtime_ns

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(generate, "write_tables", broken)
    with pytest.raises(OSError):
        generate.generate(raw, hours=0.5, interval_min=15, workers=1, progress=False)
    assert not (raw / ".complete").exists()  # a rerun that did not finish leaves no record behind
