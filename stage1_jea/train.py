"""Stage 1 training: RGB/thermal VICReg on the prepared pairs.

    python -m stage1_jea.train --preset quick prepared=runs/prepared run_dir=runs/stage1      # CPU, minutes
    torchrun --nproc-per-node 4 -m stage1_jea.train --preset full prepared=P run_dir=R       # DDP (also mpiexec/srun)

One process by default; under a launcher (torchrun, Open MPI, PALS/PMI, srun) it runs DDP. `batch_size` is
the global batch. Rerunning the same command resumes from RUN/ckpt.pt; SIGTERM/SIGUSR1 save a checkpoint at
the next step and exit cleanly. Writes RUN/{ckpt.pt, encoders.pt, config.json, env.json, log.jsonl} and plots.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from sagecast_common.config import config_to_dict, parse_config
from sagecast_common.dist import launch_env, setup, teardown
from sagecast_common.encoders import save_encoders
from sagecast_common.runio import JsonlLogger, atomic_write_json, atomic_write_text, environment_info, seed_everything
from stage1_jea.ckpt import load_checkpoint, save_checkpoint, set_rng_state
from stage1_jea.loss import vicreg_loss
from stage1_jea.model import TwoBranch, encoder_specs
from stage1_jea.optim import build_optimizer, lr_at, set_lr
from stage1_jea.plots import plot_training

SCHEDULE_KEYS = ("epochs", "batch_size", "base_lr", "warmup_epochs", "final_lr_ratio")


@dataclass
class Config:
    """Two-branch RGB/thermal VICReg (stage 1)."""

    prepared: str = field(default="runs/prepared", metadata={"help": "prepared dir (data.prepare)"})
    run_dir: str = field(default="runs/stage1", metadata={"help": "output dir; resumes if ckpt.pt exists"})
    rgb_arch: str = field(default="resnet50", metadata={"help": "timm architecture of the RGB branch"})
    thermal_arch: str = field(default="resnet50", metadata={"help": "timm architecture of the thermal branch"})
    rgb_patch: int = field(default=16, metadata={"help": "ViT patch size, RGB"})
    thermal_patch: int = field(default=8, metadata={"help": "ViT patch size, thermal (low resolution)"})
    projector: str = field(default="8192-8192-8192", metadata={"help": "projector widths"})
    crop_size: int | None = field(default=None, metadata={"help": "training crop (None: prepared size)"})
    day_only: bool = field(default=True, metadata={"help": "train on daytime pairs only"})
    epochs: int = 100
    batch_size: int = field(default=256, metadata={"help": "global batch (all ranks)"})
    optimizer: str = field(default="lars", metadata={"help": "lars | adamw"})
    base_lr: float = field(default=0.2, metadata={"help": "peak lr = base_lr * batch_size / 256"})
    weight_decay: float = 1e-6
    trust_coefficient: float = field(default=0.001, metadata={"help": "LARS eta: relative step = lr * eta"})
    independent_crops: bool = field(default=True, metadata={"help": "per-modality crop jitter (data.dataset)"})
    warmup_epochs: float = 10.0
    final_lr_ratio: float = field(default=0.001, metadata={"help": "cosine ends at this fraction of peak"})
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    num_workers: int = 4
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (GPU only)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format (GPU only)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    seed: int = 0
    log_every: int = 10
    stop_after_epoch: int = field(default=0, metadata={"help": "exit (checkpointed) after this epoch; 0: run all"})
    force_schedule: bool = field(default=False, metadata={"help": "allow resuming with a changed schedule"})


PRESETS = {
    # quick: resnet10t at 64 px, 5 epochs, on 2 CPU cores (it beat MobileNetV3-small on retrieval). AdamW (peak lr
    # 2e-3 at batch 64): LARS with eta 0.001 moved weights 7.5e-5 per step, 1.2 % over the run (issue 13). torch's
    # default thread count: on an idle 2-core machine 2 threads ran 62 pairs/s against 41 with threads=1.
    "quick": {"rgb_arch": "resnet10t", "thermal_arch": "resnet10t", "projector": "1024-1024-1024", "epochs": 5,
              "batch_size": 64, "optimizer": "adamw", "base_lr": 0.008, "weight_decay": 0.05, "warmup_epochs": 1.0,
              "num_workers": 1},
    # LARS at large batch; eta 0.01 (not VICReg's 0.001) so a step moves a weight by lr * 0.01 = 2e-3 relative
    "full": {"rgb_arch": "resnet50", "thermal_arch": "resnet50", "projector": "8192-8192-8192", "epochs": 100,
             "batch_size": 256, "optimizer": "lars", "base_lr": 0.2, "trust_coefficient": 0.01, "bf16": True},
}

_stop_signal: list[int] = []


def _on_signal(signum, frame):
    _stop_signal.append(signum)  # acted on at the next step boundary, where a checkpoint is consistent


def _dataset(cfg: Config):
    from data import PairedSkyDataset

    return PairedSkyDataset(cfg.prepared, "train", augment=True, day_only=cfg.day_only,
                            crop_size=cfg.crop_size, seed=cfg.seed, independent_crops=cfg.independent_crops)


def _seed_workers(worker_id: int) -> None:
    seed_everything(torch.initial_seed() % 2**32)


def _check_schedule(cfg: Config, ckpt: dict) -> None:
    saved = ckpt["config"]
    changed = {k: (saved.get(k), getattr(cfg, k)) for k in SCHEDULE_KEYS if saved.get(k) != getattr(cfg, k)}
    if changed and not cfg.force_schedule:
        desc = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise SystemExit(f"refusing to resume {cfg.run_dir}: the schedule changed ({desc}). The lr is a "
                         f"function of step and the total of {ckpt['total_steps']} steps fixed at the start, so "
                         "the lr would jump. Pass force_schedule=true (--force-schedule) to accept that, or use "
                         "a new run_dir.")


def main(cfg: Config) -> dict:
    env = launch_env()
    device = setup(env, device=cfg.device)
    _stop_signal.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return _train(cfg, env, device)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        teardown()


def _train(cfg: Config, env, device: torch.device) -> dict:
    run, cuda = Path(cfg.run_dir), device.type == "cuda"
    if cfg.batch_size % env.world_size:
        raise SystemExit(f"batch_size={cfg.batch_size} is not divisible by the world size {env.world_size}")
    per_rank = cfg.batch_size // env.world_size
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dataset = _dataset(cfg)
    img_size = int(dataset[0][0].shape[-1])
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(dataset)} training pairs in {cfg.prepared} are fewer than one batch ({per_rank}/rank)")

    seed_everything(cfg.seed)
    specs = encoder_specs(cfg.rgb_arch, cfg.thermal_arch, img_size=img_size, rgb_patch=cfg.rgb_patch,
                          thermal_patch=cfg.thermal_patch)
    model = TwoBranch(specs=specs, projector_dims=cfg.projector)
    if env.distributed and cuda:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, name=cfg.optimizer, weight_decay=cfg.weight_decay,
                                trust_coefficient=cfg.trust_coefficient)
    total_steps, step, epoch, batches_done = cfg.epochs * steps_per_epoch, 0, 0, 0
    logger = JsonlLogger(run / "log.jsonl", enabled=env.is_main)
    if (run / "ckpt.pt").exists():
        ckpt = load_checkpoint(run / "ckpt.pt")
        _check_schedule(cfg, ckpt)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise RuntimeError(f"{run / 'ckpt.pt'} does not fit the configured model (use a new run_dir): {e}") from e
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, batches_done = ckpt["step"], ckpt["epoch"], ckpt["batches_done"]
        if batches_done and env.world_size == 1:
            set_rng_state(ckpt["rng"])  # mid-epoch (signal) checkpoint: continue the same random stream
        if env.is_main:
            # drop lines logged after the checkpoint, so the log and plots describe one consistent run
            atomic_write_text(logger.path, "".join(json.dumps(r) + "\n" for r in logger.read() if r["step"] <= step))
            print(f"resuming {run} at step {step}/{total_steps} (epoch {epoch}, batch {batches_done})")
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = cfg.base_lr * cfg.batch_size / 256
    net = torch.compile(model) if cfg.compile else model
    if env.distributed:
        net = DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.bf16 else contextlib.nullcontext()

    def checkpoint():
        if env.is_main:
            save_checkpoint(run / "ckpt.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            step=step, epoch=epoch, batches_done=batches_done, total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch, config=config_to_dict(cfg),
                            data_order={"seed": cfg.seed, "epoch": epoch, "batches_done": batches_done})

    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", config_to_dict(cfg))
        atomic_write_json(run / "env.json", {**environment_info(), "world_size": env.world_size,
                                              "launcher": env.launcher, "device": str(device)})
    stop_epoch = min(cfg.epochs, cfg.stop_after_epoch or cfg.epochs)
    while epoch < stop_epoch:
        sampler.set_epoch(epoch)
        if batches_done == 0:
            seed_everything(cfg.seed + 1_000_003 * (epoch + 1) + env.rank)  # augmentations: f(seed, epoch, rank)
        # a fresh copy per epoch, as a worker process would get one: a dataset's own augmentation generator
        # then restarts from (seed, epoch) even with num_workers=0, so resuming at an epoch is bitwise
        loader = DataLoader(copy.copy(dataset), batch_size=per_rank, sampler=list(sampler)[batches_done * per_rank:],
                            drop_last=True, num_workers=cfg.num_workers, worker_init_fn=_seed_workers,
                            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 104729 + env.rank),
                            pin_memory=cuda)
        net.train()
        t0, pairs = time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not env.is_main, leave=False,
                   initial=batches_done, total=steps_per_epoch)
        for rgb, thermal in bar:
            lr = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, peak=peak_lr,
                       final_ratio=cfg.final_lr_ratio)
            set_lr(optimizer, lr)
            rgb = rgb.to(device, non_blocking=True, memory_format=memory_format)
            thermal = thermal.to(device, non_blocking=True, memory_format=memory_format)
            with autocast:
                h_rgb, h_thermal, z_rgb, z_thermal = net(rgb, thermal)
            loss, terms = vicreg_loss(z_rgb.float(), z_thermal.float(), sim=cfg.sim_coeff, std=cfg.std_coeff,
                                      cov=cfg.cov_coeff)
            # one all-reduce carries the loss (finite check, logging) and any rank's stop signal
            shared = torch.stack([loss.detach(), torch.tensor(float(bool(_stop_signal)), device=device)])
            if env.distributed:
                torch_dist.all_reduce(shared)
            mean_loss = shared[0].item() / env.world_size
            if not np.isfinite(mean_loss):
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise RuntimeError(f"non-finite loss at step {step} (epoch {epoch + 1}): {values}. "
                                   f"{run / 'ckpt.pt'} still holds the last good checkpoint; lower base_lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, batches_done, pairs = step + 1, batches_done + 1, pairs + per_rank * env.world_size
            if step % cfg.log_every == 0 or batches_done == steps_per_epoch:
                rate = pairs / (time.perf_counter() - t0)
                stds = [h.detach().float().std(dim=0).mean().item() for h in (h_rgb, h_thermal)]
                logger.log({"step": step, "epoch": epoch + 1, "loss": mean_loss,
                            **{k: v.item() for k, v in terms.items()}, "lr": lr, "emb_std": sum(stds) / 2,
                            "emb_std_rgb": stds[0], "emb_std_thermal": stds[1], "pairs_per_s": rate})
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2g}", pps=f"{rate:.0f}")
            if shared[1].item() > 0:
                checkpoint()
                if env.is_main:
                    print(f"signal received: saved {run / 'ckpt.pt'} at step {step}; rerun to resume")
                return {"step": step, "total_steps": total_steps, "interrupted": True}
        bar.close()
        epoch, batches_done = epoch + 1, 0
        checkpoint()
        if env.is_main:
            meta = {"img_size": img_size, "prepared": str(Path(cfg.prepared).resolve()),
                    "norm_stats": json.loads((Path(cfg.prepared) / "norm_stats.json").read_text()),
                    "specs": specs, "step": step, "total_steps": total_steps, "epoch": epoch}
            save_encoders(run / "encoders.pt", {"rgb": (model.rgb, specs["rgb"]),
                                                 "thermal": (model.thermal, specs["thermal"])}, meta)
            plot_training(logger.read(), run)
            last = logger.read()[-1]
            print(f"epoch {epoch}/{cfg.epochs} step {step}/{total_steps} loss {last['loss']:.3f} "
                  f"(inv {last['inv']:.3f} var {last['var']:.3f} cov {last['cov']:.3f}) lr {last['lr']:.3g} "
                  f"emb_std {last['emb_std']:.3f} {last['pairs_per_s']:.1f} pairs/s", flush=True)
    return {"step": step, "total_steps": total_steps, "interrupted": False}


EXIT_INCOMPLETE = 75  # EX_TEMPFAIL: checkpointed but not finished; a batch dependency (afterok) must not fire


if __name__ == "__main__":
    result = main(parse_config(Config, sys.argv[1:], presets=PRESETS, prog="python -m stage1_jea.train"))
    if result["step"] < result["total_steps"]:
        print(f"stopped at step {result['step']}/{result['total_steps']} with a checkpoint; rerun the same command "
              f"to resume", file=sys.stderr)
        sys.exit(EXIT_INCOMPLETE)
