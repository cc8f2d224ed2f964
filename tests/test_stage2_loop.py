"""Stage 2's loop has stage 1's discipline: equal batches per rank under DDP (2 gloo processes, 9 samples),
SIGTERM/SIGUSR1 → checkpoint at the current step + exit 75, and a resume over changed data refused."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sagecast_common.cli import EXIT_INCOMPLETE, UserError
from stage2_forecast import samples, train


def tiny(stage1_run, run_dir, **kw):
    width = "jepa_width" if kw.get("variant") == "jepa" else "width"  # the other variant's width is refused
    return train.Config(**{**dict(stage1_run=str(stage1_run), run_dir=str(run_dir), epochs=2, batch_size=8,
                                  dropout=0.0, log_every=1, horizons_min=(5.0, 15.0), device="cpu", **{width: 32}),
                           **kw})


REAL_LOAD_DATA = train.load_data


def first_train_windows(n: int, monkeypatch=None):
    """Patch train.load_data to keep only the first `n` training windows."""

    def load(cfg):
        table, mean, std, wins, clim, damping = REAL_LOAD_DATA(cfg)
        w = wins["train"]
        wins["train"] = samples.Windows(w.anchor[:n], w.ctx[:n], w.tgt[:n], w.horizons_min)
        return table, mean, std, wins, clim, damping

    if monkeypatch is None:
        train.load_data = load
    else:
        monkeypatch.setattr(train, "load_data", load)


def _rank(rank: int, world: int, port: int, stage1_run: str, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    first_train_windows(9)
    result = train.main(tiny(stage1_run, run_dir))
    with open(os.path.join(run_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_two_gloo_ranks_with_an_uneven_sample_count_finish(fake_stage1_run, tmp_path):
    # 9 samples, 2 ranks, 4 per rank: sharding order[rank::2] gave 5 vs 4 samples, 2 vs 1 batches, and a hang.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp_path.mkdir(exist_ok=True)
    ctx = mp.start_processes(_rank, args=(2, port, str(fake_stage1_run), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    waited = 0
    while not ctx.join(timeout=5):
        waited += 5
        if waited > 600:  # a safety net against a hung collective, not a timing assertion
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-rank stage-2 training did not finish: ranks disagree on the batch count")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1] and results[0]["step"] == results[0]["total_steps"] == 2  # 1 batch x 2 epochs
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["schedule"]["train_samples"] == 9


def test_signal_saves_the_current_step_exits_75_and_resume_finishes(fake_stage1_run, tmp_path, monkeypatch,
                                                                     capsys):
    real_gather, calls = samples.gather, []

    def signal_on_batch_two(*a, **kw):
        calls.append("target_images" in kw)  # only the training loop's gathers pass target_images
        if sum(calls) == 2 and calls[-1]:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_gather(*a, **kw)

    monkeypatch.setattr(samples, "gather", signal_on_batch_two)
    argv = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in
            vars(tiny(fake_stage1_run, tmp_path)).items()]
    with pytest.raises(SystemExit) as e:
        train.cli(argv)
    assert e.value.code == EXIT_INCOMPLETE and "rerun the same command" in capsys.readouterr().err
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["batches_done"]) == (2, 0, 2)
    monkeypatch.setattr(samples, "gather", real_gather)
    out = train.main(tiny(fake_stage1_run, tmp_path))
    assert not out["interrupted"] and out["step"] == out["total_steps"] == 2 * saved["schedule"]["steps_per_epoch"]
    steps = [r["step"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert steps == list(range(1, out["total_steps"] + 1))


def test_resume_over_changed_data_or_schedule_is_refused_unless_forced(fake_stage1_run, tmp_path, monkeypatch):
    first_train_windows(20, monkeypatch)
    train.main(tiny(fake_stage1_run, tmp_path, epochs=1))
    # 20 samples in batches of 8: 2 steps per epoch, the last partial batch dropped as in stage 1
    with pytest.raises(UserError, match=r"schedule changed \(total_steps: 2 -> 4, epochs: 1 -> 2\).*force_sched"):
        train.main(tiny(fake_stage1_run, tmp_path, epochs=2))
    first_train_windows(30, monkeypatch)  # the stage-1 run was re-exported over more days
    with pytest.raises(UserError, match=r"steps_per_epoch: 2 -> 3, train_samples: 20 -> 30"):
        train.main(tiny(fake_stage1_run, tmp_path, epochs=1))
    assert train.main(tiny(fake_stage1_run, tmp_path, epochs=2, force_schedule=True))["step"] == 2 + 3


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_stop_after_epoch_exits_75_and_completion_is_recorded_last(fake_stage1_run, tmp_path, monkeypatch, capsys):
    first_train_windows(16, monkeypatch)  # 2 steps per epoch
    argv = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in
            vars(tiny(fake_stage1_run, tmp_path, stop_after_epoch=1, patience=5)).items()]
    with pytest.raises(SystemExit) as e:
        train.cli(argv)
    assert e.value.code == EXIT_INCOMPLETE and "rerun the same command" in capsys.readouterr().err
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2) and "optimizer" in saved and "opt" not in saved
    assert not (tmp_path / "complete.json").exists()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 3, "epo')  # a SIGKILL while writing a line leaves it torn
    (tmp_path / ".ckpt.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # and one during a save, its temporary
    out = train.main(tiny(fake_stage1_run, tmp_path, patience=5))
    assert not out["interrupted"] and out["step"] == 4
    assert "dropping its torn last line" in capsys.readouterr().err
    assert not (tmp_path / ".ckpt.pt.k1ll3d.tmp").exists()
    assert [r["step"] for r in _log(tmp_path) if "lr" in r] == [1, 2, 3, 4]
    done = json.loads((tmp_path / "complete.json").read_text())
    assert done == {"best_epoch": out["best_epoch"], "best_val_mse": out["best_val_mse"], "epoch": 2, "step": 4,
                    "total_steps": 4, "early_stopped": False}
    assert (tmp_path / "complete.json").stat().st_mtime_ns >= (tmp_path / "ckpt.pt").stat().st_mtime_ns


def test_after_a_mid_epoch_resume_throughput_counts_this_run_and_the_batch_source_is_closed(
        fake_stage1_run, tmp_path, monkeypatch):
    from sagecast_common import training

    first_train_windows(24, monkeypatch)  # 3 steps per epoch
    real_gather, sources = samples.gather, []

    def signal_on_batch_two(*a, **kw):
        if "target_images" in kw and len(sources) == 1 and not hasattr(signal_on_batch_two, "sent"):
            signal_on_batch_two.calls = getattr(signal_on_batch_two, "calls", 0) + 1
            if signal_on_batch_two.calls == 2:
                signal_on_batch_two.sent = True
                os.kill(os.getpid(), signal.SIGTERM)
        return real_gather(*a, **kw)

    def recorded(*a, **kw):
        sources.append(real_batches(*a, **kw))
        return sources[-1]

    real_batches = train._train_batches
    monkeypatch.setattr(samples, "gather", signal_on_batch_two)
    monkeypatch.setattr(train, "_train_batches", recorded)
    assert train.main(tiny(fake_stage1_run, tmp_path, epochs=1))["interrupted"]
    assert sources[0].gi_frame is None  # the stop left the epoch early: its batch source was shut down
    clock = iter(range(100, 200))
    monkeypatch.setattr(training, "perf_counter", lambda: float(next(clock)))  # one second per reading
    assert not train.main(tiny(fake_stage1_run, tmp_path, epochs=1))["interrupted"]
    last = [r for r in _log(tmp_path) if "lr" in r][-1]
    # one batch of 8 in one second since the resume (counting the 2 batches before it gave 24/s)
    assert (last["step"], last["samples_per_s"]) == (3, 8.0)


def test_jepa_checkpoints_leave_out_the_frozen_encoders_and_load_run_rebuilds_them(fake_stage1_run, tmp_path,
                                                                                   monkeypatch):
    import shutil

    from sagecast_common.encoders import load_encoders, save_encoders

    stage1 = tmp_path / "stage1"
    shutil.copytree(fake_stage1_run, stage1)
    first_train_windows(16, monkeypatch)
    full_states, real_saved_state = [], train.saved_state

    def keep_full_state(model):
        full_states.append(copy.deepcopy(model.state_dict()))
        return real_saved_state(model)

    monkeypatch.setattr(train, "saved_state", keep_full_state)
    cfg = tiny(stage1, tmp_path / "jepa", variant="jepa", epochs=1, residual_base="damped")
    train.main(cfg)
    path = tmp_path / "jepa" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    encoder_keys = {k for k in full_states[-1] if k.startswith("encoders.")}
    assert encoder_keys and set(ckpt["model"]) == set(full_states[-1]) - encoder_keys
    assert not encoder_keys & set(ckpt["best_model"])
    full = {**ckpt, "model": full_states[-1], "best_model": {**ckpt["best_model"], **{
        k: v for k, v in full_states[-1].items() if k in encoder_keys}}}
    torch.save(full, tmp_path / "full.pt")
    assert path.stat().st_size < (tmp_path / "full.pt").stat().st_size

    # the trained model's own forecasts, encoders run on the images
    table, mean, std, wins, clim, _ = train.load_data(cfg)
    batch = samples.gather(table, wins["val"], np.arange(8), clim=clim, images=True)
    reference = train.build_model(cfg, ckpt["mean"], ckpt["std"])
    reference.load_state_dict(full_states[-1])
    _, loaded, _ = train.load_run(tmp_path / "jepa", best=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), reference.eval()(batch), rtol=0, atol=0)
    torch.save(full, path)  # a checkpoint from before the change, encoders included, still loads
    train.load_run(tmp_path / "jepa")

    modules, meta = load_encoders(stage1 / "encoders.pt")  # stage 1 retrained: other encoders, same file
    with torch.no_grad():
        next(modules["rgb"].parameters()).add_(1.0)
    save_encoders(stage1 / "encoders.pt", {n: (m, {k: v for k, v in entry.items() if k != "state_dict"})
                                           for (n, m), entry in zip(modules.items(), torch.load(
                                               fake_stage1_run / "encoders.pt", weights_only=True)[
                                               "encoders"].values(), strict=True)}, meta)
    with pytest.raises(UserError, match="encoders.pt changed since .* train stage 2 again"):
        train.load_run(tmp_path / "jepa")
    (stage1 / "encoders.pt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="cannot load the stage-1 encoders .*encoders.pt"):
        train.build_model(cfg, ckpt["mean"], ckpt["std"])
