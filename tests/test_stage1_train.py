"""Stage-1 training loop: bitwise resume, signals, schedule refusal, non-finite stop, run files."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from sagecast_common.cli import EXIT_INCOMPLETE, UserError
from sagecast_common.config import build_config, parse_config
from sagecast_common.encoders import load_encoders
from stage1_jea import train
from tests.fixtures_stage1 import TINY, write_fake_prepared


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(prepared, run, **over):
    return build_config(train.Config, {**TINY, "prepared": str(prepared), "run_dir": str(run), **over})


def _weights(run):
    return torch.load(run / "ckpt.pt", weights_only=True)["model"]


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_identical_and_writes_run_files(fake_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    out = train.main(_cfg(fake_data, straight))
    assert out == {"step": 6, "total_steps": 6, "interrupted": False}  # 27 day train rows // 8 = 3 steps/epoch
    first = train.main(_cfg(fake_data, resumed, stop_after_epoch=1))
    assert first == {"step": 3, "total_steps": 6, "interrupted": True}  # the CLI exits 75
    assert not (resumed / "encoders.pt").exists()  # the completion record: written only when the schedule is done
    ckpt = torch.load(resumed / "ckpt.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["total_steps"], ckpt["config"]["epochs"]) == (1, 6, 2)
    assert ckpt["schedule"] == {"total_steps": 6, "steps_per_epoch": 3, "train_pairs": 27, "epochs": 2,
                                "epoch_pairs": 0, "batch_size": 8, "base_lr": 0.2, "warmup_epochs": 0.5,
                                "final_lr_ratio": 0.001}
    after_one = _weights(resumed)
    train.main(_cfg(fake_data, resumed))
    _assert_bitwise(_weights(straight), _weights(resumed))
    assert not torch.equal(after_one["proj_rgb.0.weight"], _weights(resumed)["proj_rgb.0.weight"])  # it trained

    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert {"step", "epoch", "loss", "inv", "var", "cov", "lr", "emb_std", "pairs_per_s"} <= set(log[0])
    for name in ("config.json", "env.json", "training_loss.png", "training_loss_two_panels.png"):
        assert (straight / name).stat().st_size > 0, name
    encoders, meta = load_encoders(straight / "encoders.pt")
    assert set(encoders) == {"rgb", "thermal"} and meta["img_size"] == 32 and "rgb_mean" in meta["norm_stats"]
    assert meta["prepared"] == str(fake_data.resolve())
    torch.testing.assert_close(encoders["rgb"].state_dict()["conv1.0.weight"], _weights(straight)["rgb.conv1.0.weight"])


def test_signal_mid_epoch_saves_the_current_step_and_resume_finishes_the_schedule(fake_data, tmp_path, monkeypatch):
    # Resume is bitwise at epoch boundaries only (test above); mid-epoch it continues the epoch's order.
    run = tmp_path / "interrupted"
    calls = []

    def loss_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_loss(*args, **kwargs)

    real_loss = train.vicreg_loss
    monkeypatch.setattr(train, "vicreg_loss", loss_then_signal)
    out = train.main(_cfg(fake_data, run))
    assert out["interrupted"] and out["step"] == 2
    saved = torch.load(run / "ckpt.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["batches_done"]) == (2, 0, 2)
    assert not (run / "encoders.pt").exists()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 1, "lo')  # a SIGKILL while writing a line leaves it torn
    monkeypatch.setattr(train, "vicreg_loss", real_loss)
    assert train.main(_cfg(fake_data, run)) == {"step": 6, "total_steps": 6, "interrupted": False}
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == list(range(1, 7))
    assert not torch.equal(saved["model"]["proj_rgb.0.weight"], _weights(run)["proj_rgb.0.weight"])
    written = (run / "encoders.pt").stat().st_mtime_ns
    assert train.main(_cfg(fake_data, run))["interrupted"] is False  # a finished run: nothing to do
    assert (run / "encoders.pt").stat().st_mtime_ns == written  # written once


def test_epoch_pairs_draws_a_fresh_subset_each_epoch_and_sets_the_schedule(fake_data, tmp_path, monkeypatch):
    seen = []
    real_loader = train.DataLoader

    def recording_loader(dataset, **kw):
        seen.append(list(kw["sampler"]))
        return real_loader(dataset, **kw)

    monkeypatch.setattr(train, "DataLoader", recording_loader)
    out = train.main(_cfg(fake_data, tmp_path / "run", epoch_pairs=16, epochs=3))
    assert out == {"step": 6, "total_steps": 6, "interrupted": False}  # 16 of 27 pairs // 8 = 2 steps per epoch
    assert [len(s) for s in seen] == [16, 16, 16]
    assert all(len(set(s)) == 16 and max(s) < 27 for s in seen)
    assert len({tuple(sorted(s)) for s in seen}) == 3  # another draw each epoch, not the same 16 pairs
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert (ckpt["schedule"]["epoch_pairs"], ckpt["schedule"]["steps_per_epoch"]) == (16, 2)
    with pytest.raises(UserError, match=r"schedule changed .*epoch_pairs: 16 -> 24"):
        train.main(_cfg(fake_data, tmp_path / "run", epoch_pairs=24, epochs=3))


def test_changed_schedule_is_refused_unless_forced(fake_data, tmp_path):
    run = tmp_path / "run"
    train.main(_cfg(fake_data, run, stop_after_epoch=1))
    with pytest.raises(UserError, match=r"schedule changed \(total_steps: 6 -> 9, epochs: 2 -> 3\).*force_schedule"):
        train.main(_cfg(fake_data, run, epochs=3))
    cfg = parse_config(train.Config, [f"prepared={fake_data}", f"run_dir={run}", "--force-schedule", "epochs=3",
                                      *[f"{k}={v}" for k, v in TINY.items() if k != "epochs"]],
                       presets=train.PRESETS, prog="test")
    assert cfg.force_schedule and cfg.epochs == 3
    out = train.main(cfg)
    assert out == {"step": 9, "total_steps": 9, "interrupted": False}


def test_resume_over_a_grown_prepared_folder_is_refused(fake_data, tmp_path):
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    write_fake_prepared(prepared, n=48)
    train.main(_cfg(prepared, run, stop_after_epoch=1))
    write_fake_prepared(prepared, n=96)  # more days were prepared into the same folder
    with pytest.raises(UserError, match=r"total_steps: 6 -> 12, steps_per_epoch: 3 -> 6, train_pairs: 27 -> 54"):
        train.main(_cfg(prepared, run))
    assert train.main(_cfg(prepared, run, force_schedule=True))["total_steps"] == 12


def test_non_finite_loss_stops_with_last_good_checkpoint_intact(fake_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train.main(_cfg(fake_data, run, stop_after_epoch=1))
    before = (run / "ckpt.pt").read_bytes()

    def nan_loss(z_a, z_b, **kwargs):
        loss, terms = real_loss(z_a, z_b, **kwargs)
        return loss * float("nan"), {**terms, "var": terms["var"] * float("nan")}

    real_loss = train.vicreg_loss
    monkeypatch.setattr(train, "vicreg_loss", nan_loss)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 .*var=nan.*last good checkpoint"):
        train.main(_cfg(fake_data, run))
    assert (run / "ckpt.pt").read_bytes() == before


def test_a_second_trainer_on_the_same_run_dir_exits_2_naming_the_holder(fake_data, tmp_path, capsys):
    import subprocess
    import sys

    from tests.test_common_training import HOLD_LOCK

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as e:
            train.cli([f"{k}={v}" for k, v in {**TINY, "prepared": fake_data, "run_dir": tmp_path}.items()])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and err == [f"{train.PROG}: error: {tmp_path} is in use by another trainer (PID "
                                         f"{holder.pid}); wait for it or stop it, or use another run_dir"]


def test_unreadable_checkpoint_raises(fake_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load checkpoint .*move it away"):
        train.main(_cfg(fake_data, run))


def test_quick_and_full_presets_parse():
    quick = parse_config(train.Config, ["--preset", "quick"], presets=train.PRESETS, prog="t")
    full = parse_config(train.Config, ["--preset=full", "epochs=3"], presets=train.PRESETS, prog="t")
    assert quick.rgb_arch == "resnet10t" and full.projector == "8192-8192-8192" and full.epochs == 3


@pytest.mark.slow
def test_cli_exits_nonzero_until_the_schedule_is_done(tiny_prepared, tmp_path):
    # A batch dependency (afterok) must not start stage 2 on a half-trained model.
    import subprocess
    import sys

    args = [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "stage1_jea.train", *args, f"prepared={tiny_prepared}", f"run_dir={tmp_path}",
           "epochs=2"]
    first = subprocess.run([*cmd, "stop_after_epoch=1"], capture_output=True, text=True)
    assert first.returncode == EXIT_INCOMPLETE, first.stderr
    assert "rerun the same command to resume" in first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] > 0


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_with_workers_checkpoints_the_current_step(fake_prepared, tmp_path):
    # Slurm/PBS signal every process of the job: DataLoader workers included. They must not take the run down.
    import subprocess
    import sys
    import time

    args = [f"{k}={v}" for k, v in {**TINY, "epochs": 500, "num_workers": 1}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "stage1_jea.train", *args, f"prepared={fake_prepared}",
                             f"run_dir={tmp_path}"], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "log.jsonl"
    while proc.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= 4):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # workers ignore SIGTERM: if the main process does not end them itself, its exit waits for them forever
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running 180 s after SIGTERM: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == EXIT_INCOMPLETE, err
    assert "signal received" in out and "Traceback" not in err
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] >= 4 and ckpt["step"] == json.loads(log.read_text().splitlines()[-1])["step"]
