"""Stage 2's loop has stage 1's discipline: equal batches per rank under DDP (2 gloo processes, 9 samples),
SIGTERM/SIGUSR1 → checkpoint at the current step + exit 75, and a resume over changed data refused."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sagecast_common.cli import EXIT_INCOMPLETE, UserError
from stage2_forecast import samples, train


def tiny(stage1_run, run_dir, **kw):
    return train.Config(**{**dict(stage1_run=str(stage1_run), run_dir=str(run_dir), epochs=2, batch_size=8,
                                  width=32, dropout=0.0, log_every=1, horizons_min=(5.0, 15.0), device="cpu"), **kw})


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
    with pytest.raises(UserError, match=r"schedule changed \(total_steps: 3 -> 6, epochs: 1 -> 2\).*force_sched"):
        train.main(tiny(fake_stage1_run, tmp_path, epochs=2))
    first_train_windows(30, monkeypatch)  # the stage-1 run was re-exported over more days
    with pytest.raises(UserError, match=r"steps_per_epoch: 3 -> 4, train_samples: 20 -> 30"):
        train.main(tiny(fake_stage1_run, tmp_path, epochs=1))
    assert train.main(tiny(fake_stage1_run, tmp_path, epochs=2, force_schedule=True))["step"] == 3 + 4
