"""The shared training core: schedule, RankMe, ridge, equal shards, checkpoint load, schedule check, stop
signals, TensorBoard switch and the plot helper, each against a hand computation or the promised error."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch

from sagecast_common.checkpoint import check_schedule, load_checkpoint, load_state, save_checkpoint
from sagecast_common.cli import UserError
from sagecast_common.dist import rank_shard
from sagecast_common.linalg import rankme, ridge_fit, ridge_on_val, ridge_predict
from sagecast_common.plots import pyplot, save_figure
from sagecast_common.runio import JsonlLogger
from sagecast_common.schedule import lr_at
from sagecast_common.stopping import StopSignals, stop_signals_blocked


def test_lr_warms_up_from_the_first_step_then_cosine_to_the_floor():
    kw = {"total_steps": 100, "warmup_steps": 10, "peak": 2.0, "final_ratio": 0.001}
    assert lr_at(0, **kw) == pytest.approx(0.2)  # (step + 1) / warmup: no step is spent at lr 0
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(9, **kw) == pytest.approx(2.0) == lr_at(10, **kw)
    assert lr_at(55, **kw) == pytest.approx(0.002 + (2.0 - 0.002) * 0.5)
    assert lr_at(100, **kw) == pytest.approx(0.002) == lr_at(150, **kw)
    assert lr_at(0, total_steps=10, warmup_steps=0, peak=1.0) == 1.0


def test_rankme_is_centred():
    assert rankme(np.outer(np.arange(50.0), np.ones(4))) == pytest.approx(1.0, abs=1e-4)
    assert rankme(np.eye(4).repeat(10, axis=0)) == pytest.approx(3.0, rel=1e-3)
    assert rankme(np.eye(6) + 5.0) == pytest.approx(5.0, rel=1e-3)  # a shared offset is not a direction
    assert rankme(np.ones((8, 3))) == pytest.approx(1.0, abs=1e-3)  # every row the same: collapsed


def test_ridge_recovers_a_linear_map_in_primal_and_dual_form():
    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0, 0.0, 0.5])
    x = rng.normal(size=(50, 4))
    xm, ym, coef = ridge_fit(x, x @ w + 3, alpha=1e-9)
    np.testing.assert_allclose(coef, w, atol=1e-6)
    assert ym == pytest.approx((x @ w + 3).mean())
    wide = rng.normal(size=(5, 40))  # fewer rows than features: the dual system, same answer as the primal one
    y = rng.normal(size=5)
    dual = ridge_fit(wide, y, alpha=0.5)
    xc = wide - wide.mean(0)
    primal = np.linalg.solve(xc.T @ xc + 0.5 * (xc**2).sum() / 5 * np.eye(40), xc.T @ (y - y.mean()))
    np.testing.assert_allclose(dual[2], primal, atol=1e-8)


def test_ridge_penalty_is_chosen_on_val():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 20))
    y_noise = rng.normal(size=60)  # pure noise: the val set prefers the strongest penalty
    alpha, fit = ridge_on_val(x[:40], y_noise[:40], x[40:], y_noise[40:], alphas=(1e-3, 1e3))
    assert alpha == 1e3
    y_signal = x @ rng.normal(size=20)  # noiseless: the weakest penalty, and it predicts val exactly
    alpha, fit = ridge_on_val(x[:40], y_signal[:40], x[40:], y_signal[40:], alphas=(1e-6, 1e3))
    assert alpha == 1e-6 and np.abs(ridge_predict(fit, x[40:]) - y_signal[40:]).max() < 1e-3


def test_every_rank_gets_an_equal_disjoint_share():
    shards = [rank_shard(9, rank=r, world_size=2, seed=0, epoch=3) for r in range(2)]
    assert [len(s) for s in shards] == [4, 4] and not set(shards[0]) & set(shards[1])
    assert rank_shard(9, rank=0, world_size=2, seed=0, epoch=3) == shards[0]  # a function of (seed, epoch)
    assert rank_shard(9, rank=0, world_size=2, seed=0, epoch=4) != shards[0]
    assert sorted(rank_shard(9, rank=0, world_size=1, seed=0, epoch=0)) == list(range(9))


def test_checkpoint_round_trip_and_loud_failures(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = torch.nn.Linear(3, 2)
    save_checkpoint(path, model=model.state_dict(), step=7)
    assert load_checkpoint(path)["step"] == 7
    with pytest.raises(UserError, match="does not fit the configured model"):
        load_state(torch.nn.Linear(4, 2), load_checkpoint(path)["model"], path=path)
    path.write_bytes(b"truncated")
    with pytest.raises(UserError, match=r"cannot load checkpoint .*ckpt.pt.*move it away"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_schedule_check_names_each_change_and_yields_to_force(tmp_path):
    saved = {"total_steps": 60, "steps_per_epoch": 6, "train_pairs": 48}
    check_schedule(saved, dict(saved), force=False, path="r")
    grown = {**saved, "total_steps": 80, "steps_per_epoch": 8, "train_pairs": 64}
    with pytest.raises(UserError, match=r"total_steps: 60 -> 80, steps_per_epoch: 6 -> 8, train_pairs: 48 -> 64"):
        check_schedule(saved, grown, force=False, path="r")
    check_schedule(saved, grown, force=True, path="r")


def test_stop_signals_are_recorded_and_handlers_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.received == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_stop_signal_during_worker_start_waits_for_the_main_process():
    with StopSignals() as stop:
        with stop_signals_blocked():
            # to this thread (the one that starts workers): a process-wide kill may land on any other thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            assert not stop.requested  # held while workers would be starting
        assert stop.requested and stop.received == [signal.SIGTERM]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match="pip install tensorboard"):
        JsonlLogger(tmp_path / "log.jsonl", tensorboard=True)
    JsonlLogger(tmp_path / "log.jsonl", enabled=False, tensorboard=True)  # other ranks never need it


def test_save_figure_is_atomic_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number) and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_one_user_error_type_through_the_cli(capsys):
    from sagecast_common.cli import run_cli
    from sagecast_common.config import ConfigError

    assert issubclass(ConfigError, UserError)
    for error in (UserError("a user error\nsecond line"), ConfigError("a config error")):
        def fail(error=error):
            raise error

        with pytest.raises(SystemExit) as e:
            run_cli(fail, prog="tool")
        assert e.value.code == 2 and capsys.readouterr().err == f"tool: error: {str(error).splitlines()[0]}\n"


def test_unused_options_are_refused_when_changed_and_dropped_from_a_preset():
    from dataclasses import dataclass

    from sagecast_common.config import ConfigError, build_config, parse_config, reject_unused

    @dataclass
    class Cfg:
        variant: str = "a"
        width: int = 8
        a_only: int = 1

        def unused_options(self):
            return {"a_only": "variant b has no a"} if self.variant == "b" else {}

    presets = {"wide": {"width": 16, "a_only": 4}}
    assert parse_config(Cfg, ["--preset", "wide", "variant=b"], presets=presets, prog="t") == Cfg("b", 16, 1)
    assert parse_config(Cfg, ["--preset", "wide"], presets=presets, prog="t") == Cfg("a", 16, 4)
    with pytest.raises(ConfigError, match=r"^a_only=4 would do nothing: variant b has no a$"):
        parse_config(Cfg, ["--preset", "wide", "variant=b", "a_only=4"], presets=presets, prog="t")
    with pytest.raises(ConfigError, match="a_only=3 would do nothing"):
        reject_unused(build_config(Cfg, {"variant": "b", "a_only": 3}))
    # every key at its default, as when a saved config is passed back in full, stays valid
    assert parse_config(Cfg, ["variant=b", "a_only=1"], presets=presets, prog="t") == Cfg("b", 8, 1)


def test_steps_per_epoch_round_down_in_both_stages():
    from sagecast_common.training import steps_per_epoch

    assert [steps_per_epoch(n, 8) for n in (7, 8, 15, 16, 17)] == [0, 1, 1, 2, 2]


def test_sync_step_raises_floating_point_error_naming_the_terms_and_reports_stops(tmp_path):
    from sagecast_common.dist import LaunchEnv
    from sagecast_common.training import sync_step

    with StopSignals() as stop:
        kw = {"step": 4, "epoch": 2, "terms": {"mse": torch.tensor(float("inf"))}, "ckpt": tmp_path / "ckpt.pt"}
        with pytest.raises(FloatingPointError, match=r"non-finite loss at step 4 \(epoch 2\): mse=inf\. .*ckpt.pt "
                                                     "still holds the last good checkpoint"):
            sync_step(torch.tensor(float("nan")), stop, LaunchEnv(), **kw)
        assert sync_step(torch.tensor(2.5), stop, LaunchEnv(), **kw) == (2.5, False)
        os.kill(os.getpid(), signal.SIGTERM)
        assert sync_step(torch.tensor(2.5), stop, LaunchEnv(), **kw) == (2.5, True)


def test_throughput_counts_only_this_invocation(monkeypatch):
    from sagecast_common import training

    clock = iter([100.0, 104.0])
    monkeypatch.setattr(training, "perf_counter", lambda: next(clock))
    meter = training.Throughput()
    meter.add(16)
    meter.add(16)
    assert meter.rate == 8.0


def test_closing_batches_ends_dataloader_workers_when_the_loop_is_left_early():
    import multiprocessing

    from torch.utils.data import DataLoader

    from sagecast_common.training import closing_batches

    loader = DataLoader(list(range(64)), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match="left early"):
        with closing_batches(loader) as batches:
            next(batches)
            assert multiprocessing.active_children()
            raise RuntimeError("left early")
    assert not multiprocessing.active_children()


def test_a_torn_last_log_line_is_dropped_once_and_a_broken_middle_line_refused(tmp_path, capsys):
    log = JsonlLogger(tmp_path / "log.jsonl")
    log.log({"step": 1, "loss": 1.0})
    log.log({"step": 2, "loss": 0.5})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # what a kill in the middle of a write leaves
    log.keep_until(2)
    assert log.read() == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert capsys.readouterr().err.count("dropping its torn last line") == 1
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="log.jsonl line 2 is not JSON"):
        log.read()


def test_stale_checkpoint_temporaries_are_removed_at_start(tmp_path):
    from sagecast_common.dist import LaunchEnv
    from sagecast_common.training import prepare_run_dir

    for name in (".ckpt.pt.x1y2.tmp", ".encoders.pt.ab.tmp", "keep.tmp", ".other.abc.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    prepare_run_dir(tmp_path, LaunchEnv())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "keep.tmp"]


HOLD_LOCK = """
import sys, time
from pathlib import Path
import torch
from sagecast_common.dist import LaunchEnv
from sagecast_common.training import lock_run
with lock_run(Path(sys.argv[1]), LaunchEnv(), torch.device("cpu")):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_folder_has_one_trainer_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    import subprocess
    import sys

    from sagecast_common.dist import LaunchEnv
    from sagecast_common.training import lock_run

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another trainer \(PID {holder.pid}\)"):
            with lock_run(tmp_path, LaunchEnv(), torch.device("cpu")):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock with the process
        holder.wait()
    with lock_run(tmp_path, LaunchEnv(), torch.device("cpu")):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with lock_run(tmp_path, LaunchEnv(), torch.device("cpu")):  # released on exit: the same process takes it again
        pass
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="cannot use .*a_file/run as a run folder"):
        with lock_run(tmp_path / "a_file" / "run", LaunchEnv(), torch.device("cpu")):
            pass
