"""Running declared steps here, in order: each in its own process, skipped when its completion record exists.

    run_steps(steps, prog="compare", timings=OUT / "timings.json")

A step whose completion record is absent runs again (its tool resumes its own checkpoint). SIGINT/SIGTERM
sent to this process are passed on to the running step, which is waited for (stage training saves a
checkpoint and exits 75), so no step outlives the process that started it; then the run stops.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sagecast_pipeline.steps import Step

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepFailed(Exception):
    """A step exited non-zero, was stopped by a signal, or finished without its completion record."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def write_json(path: Path, obj: dict) -> None:
    """Atomic like sagecast_common.runio.atomic_write_json, which imports numpy (this package must not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_command(cmd: Sequence[str]) -> tuple[int, int | None]:
    """Run `cmd` to its end; returns (exit status, the first stop signal this process received meanwhile).

    The child stays in this process group, so killing the group (a batch system, `kill -9 -PGID`) ends both.
    A signal sent to this process alone is forwarded, and the child is waited for: it may be saving a
    checkpoint, and a rerun must not find it still training on the same folder."""
    received: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum, frame):
        received.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        proc = subprocess.Popen(cmd)
        if received:  # arrived while the child was being started
            proc.send_signal(received[0])
        status = proc.wait()  # retried after each handled signal (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status, (received[0] if received else None)


def run_one(name: str, record: Path, cmd: Sequence[str], *, prog: str, timings: Path | None = None,
            redo: bool = False) -> bool:
    """Run one step unless `record` exists (`redo`: run it anyway; the old record stays until the tool replaces it);
    add its wall time to the `timings` JSON file. True if it ran.

    The timings file is rewritten after every step, so a run stopped halfway keeps the times of what it finished."""
    if record.exists() and not redo:
        print(f"[{prog}] {name}: done ({record})", flush=True)
        return False
    print(f"[{prog}] {name}: {shlex.join(cmd)}", flush=True)
    before = record.stat().st_mtime_ns if record.exists() else None
    t0 = time.perf_counter()
    status, stop = run_command(cmd)
    if stop is not None:
        sig = signal.Signals(stop).name
        raise StepFailed(f"{sig}: stopped while {name} ran (it exited {status}); rerun to resume",
                         status if status > 0 else 128 + stop)
    if status != 0:
        raise StepFailed(f"{name} failed (exit {status}): {shlex.join(cmd)}", status if status > 0 else 1)
    if not record.exists() or record.stat().st_mtime_ns == before:
        raise StepFailed(f"{name} exited 0 without writing its completion record {record}", 1)
    if timings is not None:
        previous = json.loads(timings.read_text()) if timings.exists() else {}
        write_json(timings, {**previous, name: round(time.perf_counter() - t0, 1)})
    return True


def missing_inputs(steps: Sequence[Step]) -> list[Path]:
    """Records the steps read that neither exist nor are written by an earlier one of `steps`."""
    made, missing = set(), []
    for step in steps:
        missing += [p for p in step.needs if p not in made and not p.exists() and p not in missing]
        made.add(step.record)
    return missing


def stale(step: Step) -> bool:
    """A `refresh` step whose record is older than a record it needs (that step reran since)."""
    if not step.refresh or not step.record.exists():
        return False
    done_at = step.record.stat().st_mtime
    return any(p.exists() and p.stat().st_mtime > done_at for p in step.needs)


def run_steps(steps: Sequence[Step], *, prog: str, python: str = sys.executable, timings: Path | None = None) -> None:
    for step in steps:
        redo = stale(step)
        if redo:
            print(f"[{prog}] {step.name}: redone (a record it reads is newer than {step.record})", flush=True)
        if not step.record.exists():
            for src, dst in step.copies:
                if src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        run_one(step.name, step.record, step.argv(python), prog=prog, timings=timings, redo=redo)


def print_steps(steps: Sequence[Step]) -> None:
    """The commands, one a line, each after the record that marks it done (what a run would do)."""
    for step in steps:
        for src, dst in step.copies:
            print(f"# {step.name}: cp {shlex.quote(str(src))} {shlex.quote(str(dst))}")
        print(f"# {step.name}: done when {step.record} exists\n{step.shell()}")
