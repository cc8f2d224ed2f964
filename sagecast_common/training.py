"""The training-loop pieces both stages share, so their two loops keep one shape and cannot drift.

Each stage's `train.py` reads top to bottom: `Config`, `main(cfg)` (= `launch(...)` of its `_train`), an epoch
driver over an explicit `train_one_epoch(...)` / `validate(...)` pair, and `cli()` (= `run_training_cli`).
What they share lives here:

- `launch`: the launcher's process group, stop signals recorded, RUN locked by rank 0 (a second trainer on the
  same folder exits 2 naming the holder's PID; the kernel releases the lock when the process dies, SIGKILL too).
- `prepare_run_dir`, `write_run_info`: the folder, stale temporaries of a killed save removed, config.json and
  env.json.
- `resume`: the checkpoint loaded with its schedule check, and the log cut back to the checkpoint's step.
- `steps_per_epoch`: one rounding rule (down: a last partial batch is dropped, like DataLoader's drop_last);
  `seed_epoch`: the epoch's random draws a function of (seed, epoch, rank).
- `sync_step`: the one per-step all-reduce carrying the loss (finite check) and any rank's stop request.
- `Throughput`, `closing_batches`: items/s of this process only, and a batch source always shut down.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from sagecast_common.checkpoint import check_schedule, load_checkpoint
from sagecast_common.cli import EXIT_INCOMPLETE, UserError, run_cli
from sagecast_common.config import config_to_dict, parse_config
from sagecast_common.dist import LaunchEnv, launch_env, setup, teardown
from sagecast_common.runio import JsonlLogger, atomic_write_json, environment_info, seed_everything
from sagecast_common.stopping import StopSignals, stop_signals_blocked

LOCK_NAME = ".lock"
# atomic_path's temporaries (".NAME.<random>.tmp") of the files a trainer writes; one left by a SIGKILL is garbage
STALE_TEMPORARIES = (".ckpt.pt.*.tmp", ".encoders.pt.*.tmp", ".complete.json.*.tmp", ".log.jsonl.*.tmp",
                     ".config.json.*.tmp", ".env.json.*.tmp")


def launch(train: Callable[[LaunchEnv, torch.device, StopSignals], dict], *, run_dir: str | Path,
           device: str) -> dict:
    """`train(env, device, stop)` in the launcher's process group (one process by default), with stop signals
    recorded and RUN_DIR locked for the duration; the process group is always torn down."""
    try:
        env = launch_env()
    except ValueError as e:  # the launcher's variables, as the user's job script set them
        raise UserError(str(e)) from None
    dev = setup(env, device=device)
    try:
        with StopSignals() as stop, lock_run(Path(run_dir), env, dev):
            return train(env, dev, stop)
    finally:
        teardown()


@contextlib.contextmanager
def lock_run(run: Path, env: LaunchEnv, device: torch.device) -> Iterator[None]:
    """Hold an exclusive flock on RUN/.lock. Rank 0 takes it and every rank learns the outcome, so all of them
    stop together when it is held elsewhere."""
    handle, problem = None, None
    if env.is_main:
        try:
            run.mkdir(parents=True, exist_ok=True)
            handle = open(run / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the whole run: the fd is the lock
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except BlockingIOError:
            handle.seek(0)
            problem = (f"{run} is in use by another trainer (PID {handle.read().strip() or 'unknown'}); wait for "
                       "it or stop it, or use another run_dir")
        except OSError as e:
            problem = f"cannot use {run} as a run folder ({e.strerror}): choose another run_dir"
        if problem and handle is not None:
            handle.close()
            handle = None
    taken = torch.tensor([0.0 if problem else 1.0], device=device)
    if env.distributed:
        torch_dist.all_reduce(taken, op=torch_dist.ReduceOp.MIN)
    if taken.item() < 1:
        raise UserError(problem or f"{run} could not be locked (see rank 0's error)")
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the flock; the file stays (an unlocked .lock is not a held one)


def prepare_run_dir(run: Path, env: LaunchEnv) -> None:
    """Create RUN and remove the temporaries a killed save left (safe: this process holds the lock)."""
    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        for pattern in STALE_TEMPORARIES:
            for stale in run.glob(pattern):
                stale.unlink(missing_ok=True)


def write_run_info(run: Path, cfg, env: LaunchEnv, device: torch.device) -> None:
    """RUN/config.json and RUN/env.json (rank 0); written after a resume was accepted, so a refused one leaves
    the run's files as they were."""
    if env.is_main:
        atomic_write_json(run / "config.json", config_to_dict(cfg))
        atomic_write_json(run / "env.json", {**environment_info(), "world_size": env.world_size,
                                              "launcher": env.launcher, "device": str(device)})


def resume(run: Path, log: JsonlLogger, *, schedule: dict, force: bool, device: torch.device | str = "cpu",
           is_main: bool = True) -> dict | None:
    """The checkpoint RUN/ckpt.pt (None: a fresh run), refused if its schedule differs from `schedule` unless
    forced. The log keeps only lines up to the checkpoint's step (a resumed run redoes the rest); a broken
    checkpoint raises rather than restarting silently."""
    path = run / "ckpt.pt"
    ckpt = load_checkpoint(path, map_location=device) if path.exists() else None
    if ckpt is not None:
        check_schedule(ckpt.get("schedule", {}), schedule, force=force, path=path)
    log.keep_until(0 if ckpt is None else ckpt["step"])
    if ckpt is not None and is_main:
        print(f"resuming {run} at step {ckpt['step']}/{schedule['total_steps']} (epoch {ckpt['epoch']}, "
              f"batch {ckpt['batches_done']})")
    return ckpt


def steps_per_epoch(samples_per_rank: int, per_rank_batch: int) -> int:
    """Batches per epoch on every rank: rounded down, a last partial batch is dropped (each rank has the same
    number of samples, `dist.rank_shard`, so the same count)."""
    return samples_per_rank // per_rank_batch


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the global RNGs for `epoch` on `rank`: the epoch's random draws are a function of (seed, epoch,
    rank), so a run resumed at an epoch boundary draws exactly what an uninterrupted one would."""
    seed_everything(seed + 1_000_003 * (epoch + 1) + rank)


def sync_step(loss: torch.Tensor, stop: StopSignals, env: LaunchEnv, *, step: int, epoch: int, terms: dict,
              ckpt: Path) -> tuple[float, bool]:
    """(mean loss over ranks, whether any rank was asked to stop), from one all-reduce per step.

    A non-finite mean loss raises FloatingPointError before the optimiser step, so the last checkpoint stays
    the last good state.
    """
    shared = torch.stack([loss.detach().float(), torch.tensor(float(stop.requested), device=loss.device)])
    if env.distributed:
        torch_dist.all_reduce(shared)
    mean_loss = shared[0].item() / env.world_size
    if not np.isfinite(mean_loss):
        values = ", ".join(f"{k}={float(torch.as_tensor(v).detach()):.4g}" for k, v in terms.items())
        raise FloatingPointError(f"non-finite loss at step {step} (epoch {epoch}): {values}. {ckpt} still holds "
                                 "the last good checkpoint; lower the learning rate")
    return mean_loss, shared[1].item() > 0


class Throughput:
    """Items per second processed by this invocation since it was made (a resumed epoch counts from there)."""

    def __init__(self):
        self.start, self.items = perf_counter(), 0

    def add(self, n: int) -> None:
        self.items += n

    @property
    def rate(self) -> float:
        return self.items / max(perf_counter() - self.start, 1e-9)


@contextlib.contextmanager
def closing_batches(batches: Iterable) -> Iterator[Iterator]:
    """Iterate `batches` (a DataLoader or any iterable) and always shut the source down when the block ends.

    A DataLoader's workers start with the stop signals blocked (see sagecast_common.stopping) and end, when the
    block is left, through the loader's own shutdown. Left to garbage collection, a loop left early (stop
    signal, error) can keep them until interpreter exit, where multiprocessing terminate()s them with SIGTERM,
    which they ignore, and then waits for them forever: a preempted job would hang instead of exiting 75.
    """
    source = _started(batches)
    try:
        yield source
    finally:
        source.close()  # drops the loader's iterator here, which shuts its workers down


def _started(batches: Iterable) -> Iterator:
    with stop_signals_blocked():
        iterator = iter(batches)
    yield from iterator


def run_training_cli(main: Callable[[Any], dict], config_cls, presets: dict, *, prog: str,
                     argv: list[str] | None) -> None:
    """Parse the config, run `main(cfg)`, exit 0 when its schedule finished, 75 when it stopped with a
    checkpoint (a batch dependency must not fire), 2 with one line on a user error."""

    def run() -> int:
        result = main(parse_config(config_cls, sys.argv[1:] if argv is None else argv, presets=presets, prog=prog))
        if result["interrupted"]:
            print(f"stopped at step {result['step']}/{result['total_steps']} with a checkpoint; rerun the same "
                  "command to resume", file=sys.stderr)
            if os.environ.get("SAGECAST_STOP_MARKER"):  # torchrun/srun report 75 as 1; jobs/run_stage.sh reads this
                Path(os.environ["SAGECAST_STOP_MARKER"]).touch()
            return EXIT_INCOMPLETE
        return 0

    run_cli(run, prog=prog)
