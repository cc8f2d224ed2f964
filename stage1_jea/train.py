"""Stage 1 training: RGB/thermal VICReg on the prepared pairs.

    sagecast-stage1-train --preset quick prepared=runs/prepared run_dir=runs/stage1    # CPU, minutes (= python -m)
    torchrun --nproc-per-node 4 -m stage1_jea.train --preset full prepared=P run_dir=R       # DDP (also mpiexec/srun)

One process by default; under a launcher (torchrun, Open MPI, PALS/PMI, srun) it runs DDP. `batch_size` is
the global batch. Rerunning the same command resumes from RUN/ckpt.pt: bitwise the same as an uninterrupted
run when it stopped at an epoch boundary; after a mid-epoch stop it continues with the epoch's remaining
samples in the same order, with fresh augmentation draws. SIGTERM/SIGUSR1 (to the main process or the whole
process group) save a checkpoint at the current step and exit 75. Writes RUN/{ckpt.pt, encoders.pt,
config.json, env.json, log.jsonl} and plots (tensorboard=true: also RUN/tb/).
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from sagecast_common.checkpoint import check_schedule, load_checkpoint, load_state, save_checkpoint
from sagecast_common.cli import EXIT_INCOMPLETE, UserError, require, run_cli
from sagecast_common.config import config_to_dict, option, parse_config
from sagecast_common.dist import rank_shard, run_distributed
from sagecast_common.encoders import save_encoders
from sagecast_common.progress import progress
from sagecast_common.runio import JsonlLogger, atomic_write_json, environment_info, seed_everything
from sagecast_common.schedule import lr_at, set_lr
from sagecast_common.stopping import StopSignals, ignore_stop_signals, stop_signals_blocked
from stage1_jea.loss import vicreg_loss
from stage1_jea.model import TwoBranch, encoder_specs
from stage1_jea.optim import build_optimizer
from stage1_jea.plots import plot_training

PROG = "sagecast-stage1-train"
SCHEDULE_KEYS = ("epochs", "batch_size", "base_lr", "warmup_epochs", "final_lr_ratio")


@dataclass
class Config:
    """Two-branch RGB/thermal VICReg (stage 1)."""

    prepared: str = option("runs/prepared", "prepared dir (sagecast-prepare)")
    run_dir: str = option("runs/stage1", "output dir; resumes if ckpt.pt exists")
    rgb_arch: str = option("resnet50", "timm architecture of the RGB branch")
    thermal_arch: str = option("resnet50", "timm architecture of the thermal branch")
    rgb_patch: int = option(16, "ViT patch size, RGB", ge=1)
    thermal_patch: int = option(8, "ViT patch size, thermal (low resolution)", ge=1)
    projector: str = option("8192-8192-8192", "projector widths")
    crop_size: int | None = option(None, "training crop (None: prepared size)", ge=1)
    day_only: bool = option(True, "train on daytime pairs only")
    epochs: int = option(100, "training epochs", ge=1)
    batch_size: int = option(256, "global batch (all ranks)", ge=1)
    optimizer: Literal["lars", "adamw"] = option("lars", "optimiser")
    base_lr: float = option(0.2, "peak lr = base_lr * batch_size / 256", gt=0)
    weight_decay: float = option(1e-6, "weight decay (not on biases and norms)", ge=0)
    trust_coefficient: float = option(0.001, "LARS eta: relative step = lr * eta", gt=0)
    independent_crops: bool = option(True, "per-modality crop jitter, IoU >= 0.5 (data.dataset)")
    warmup_epochs: float = option(10.0, "linear warmup length", ge=0)
    final_lr_ratio: float = option(0.001, "cosine ends at this fraction of peak", ge=0)
    sim_coeff: float = option(25.0, "VICReg invariance weight", ge=0)
    std_coeff: float = option(25.0, "VICReg variance weight", ge=0)
    cov_coeff: float = option(1.0, "VICReg covariance weight", ge=0)
    num_workers: int = option(4, "DataLoader worker processes per rank", ge=0)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: CUDA when available")
    threads: int = option(0, "torch CPU threads (0: torch's default)", ge=0)
    bf16: bool = option(True, "bf16 autocast (GPU only)")
    channels_last: bool = option(True, "channels_last memory format (GPU only)")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "seed of weights, data order and augmentations")
    log_every: int = option(10, "steps between log.jsonl lines", ge=1)
    tensorboard: bool = option(False, "also write RUN/tb/ TensorBoard events (rank 0)")
    stop_after_epoch: int = option(0, "exit (checkpointed, status 75) after this epoch; 0: run all", ge=0)
    force_schedule: bool = option(False, "allow resuming with a changed schedule")


PRESETS = {
    # quick: resnet10t at 64 px, 5 epochs, on 2 CPU cores (it beat MobileNetV3-small on retrieval). AdamW (peak lr
    # 2e-3 at batch 64): LARS with eta 0.001 moved weights 7.5e-5 per step, 1.2 % over the run (issue 13). torch's
    # default thread count: on an idle 2-core machine 2 threads ran 62 pairs/s against 41 with threads=1.
    # Projector 256 (4x the batch, VICReg's own ratio): with 1024 the variance term stayed flat (18.7 -> 18.6) and
    # thermal->RGB retrieval was 1.1x aligned random init; with 256 it fell 17.7 -> 15.6 and reached 1.47x (README).
    "quick": {"rgb_arch": "resnet10t", "thermal_arch": "resnet10t", "projector": "256-256-256", "epochs": 5,
              "batch_size": 64, "optimizer": "adamw", "base_lr": 0.008, "weight_decay": 0.05, "warmup_epochs": 1.0,
              "num_workers": 1},
    # LARS at large batch; eta 0.01 (not VICReg's 0.001) so a step moves a weight by lr * 0.01 = 2e-3 relative
    "full": {"rgb_arch": "resnet50", "thermal_arch": "resnet50", "projector": "8192-8192-8192", "epochs": 100,
             "batch_size": 256, "optimizer": "lars", "base_lr": 0.2, "trust_coefficient": 0.01, "bf16": True},
}

def _dataset(cfg: Config):
    from data import PairedSkyDataset

    return PairedSkyDataset(cfg.prepared, "train", augment=True, day_only=cfg.day_only,
                            crop_size=cfg.crop_size, seed=cfg.seed, independent_crops=cfg.independent_crops)


def _init_worker(worker_id: int) -> None:
    seed_everything(torch.initial_seed() % 2**32)
    ignore_stop_signals()  # the main process saves first, then ends the workers


def main(cfg: Config) -> dict:
    return run_distributed(lambda env, device, stop: _train(cfg, env, device, stop), device=cfg.device)


def _train(cfg: Config, env, device: torch.device, stop: StopSignals) -> dict:
    run, cuda = Path(cfg.run_dir), device.type == "cuda"
    if cfg.batch_size % env.world_size:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by the world size {env.world_size}")
    per_rank = cfg.batch_size // env.world_size
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    require(Path(cfg.prepared) / "index.parquet", made_by="sagecast-prepare", what="prepared index")
    dataset = _dataset(cfg)
    img_size = int(dataset[0][0].shape[-1])
    shard = lambda epoch: rank_shard(len(dataset), rank=env.rank, world_size=env.world_size, seed=cfg.seed,
                                     epoch=epoch)
    steps_per_epoch = len(shard(0)) // per_rank
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} training pairs in {cfg.prepared} are fewer than one batch ({per_rank}/rank)")

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
    # everything the lr depends on, fixed at the first run; a resume that would change it is refused
    schedule = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "train_pairs": len(dataset),
                **{k: getattr(cfg, k) for k in SCHEDULE_KEYS}}
    logger = JsonlLogger(run / "log.jsonl", enabled=env.is_main, tensorboard=cfg.tensorboard)
    if (run / "ckpt.pt").exists():
        ckpt = load_checkpoint(run / "ckpt.pt")
        check_schedule(ckpt.get("schedule", {}), schedule, force=cfg.force_schedule, path=run / "ckpt.pt")
        load_state(model, ckpt["model"], path=run / "ckpt.pt")
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, batches_done = ckpt["step"], ckpt["epoch"], ckpt["batches_done"]
        logger.keep_until(step)
        if env.is_main:
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
                            schedule=schedule, config=config_to_dict(cfg))

    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", config_to_dict(cfg))
        atomic_write_json(run / "env.json", {**environment_info(), "world_size": env.world_size,
                                              "launcher": env.launcher, "device": str(device)})
    stop_epoch = min(cfg.epochs, cfg.stop_after_epoch or cfg.epochs)
    while epoch < stop_epoch:
        seed_everything(cfg.seed + 1_000_003 * (epoch + 1) + env.rank)  # augmentations: f(seed, epoch, rank)
        # a fresh copy per epoch, as a worker process would get one: a dataset's own augmentation generator
        # then restarts from (seed, epoch) even with num_workers=0, so resuming at an epoch is bitwise. A
        # mid-epoch resume skips the batches already done (same order), with fresh augmentation draws.
        loader = DataLoader(copy.copy(dataset), batch_size=per_rank, sampler=shard(epoch)[batches_done * per_rank:],
                            drop_last=True, num_workers=cfg.num_workers, worker_init_fn=_init_worker,
                            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 104729 + env.rank),
                            pin_memory=cuda)
        net.train()
        t0, pairs = time.perf_counter(), 0
        batches = _batches(loader)
        bar = progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=env.is_main,
                       initial=batches_done, total=steps_per_epoch)
        stopped = False
        try:
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
                shared = torch.stack([loss.detach(), torch.tensor(float(stop.requested), device=device)])
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
                stopped = shared[1].item() > 0  # some rank was asked to stop: all save this step together
                if stopped:
                    break
        finally:
            # End the workers now, through the loader's own shutdown. Left to garbage collection, a loop left
            # early (stop signal, error) can keep them until interpreter exit, where multiprocessing terminate()s
            # them with SIGTERM — which they ignore — and then waits for them forever: a preempted job would hang
            # instead of exiting 75.
            bar.close()
            batches.close()
        if stopped or stop.requested:
            checkpoint()
            if env.is_main:
                print(f"signal received: saved {run / 'ckpt.pt'} at step {step}; rerun to resume", flush=True)
            return {"step": step, "total_steps": total_steps, "interrupted": True}
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


def _batches(loader):
    """The loader's batches, its workers started with the stop signals blocked (see sagecast_common.stopping)."""
    with stop_signals_blocked():
        batches = iter(loader)
    yield from batches


def cli(argv: list[str] | None = None) -> None:
    def run() -> int:
        result = main(parse_config(Config, sys.argv[1:] if argv is None else argv, presets=PRESETS, prog=PROG))
        if result["step"] < result["total_steps"]:
            print(f"stopped at step {result['step']}/{result['total_steps']} with a checkpoint; rerun the same "
                  "command to resume", file=sys.stderr)
            return EXIT_INCOMPLETE
        return 0

    run_cli(run, prog=PROG)


if __name__ == "__main__":
    cli()
