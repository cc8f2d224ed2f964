"""Stage 1 training: RGB/thermal VICReg on the prepared pairs.

    sagecast-stage1-train --preset quick prepared=runs/prepared run_dir=runs/stage1    # CPU, minutes (= python -m)
    torchrun --nproc-per-node 4 -m stage1_jea.train --preset full prepared=P run_dir=R       # DDP (also mpiexec/srun)

One process by default; under a launcher (torchrun, Open MPI, PALS/PMI, srun) it runs DDP. `batch_size` is
the global batch. Rerunning the same command resumes from RUN/ckpt.pt: bitwise the same as an uninterrupted
run when it stopped at an epoch boundary; after a mid-epoch stop it continues with the epoch's remaining
samples in the same order, with fresh augmentation draws. SIGTERM/SIGUSR1 (to the main process or the whole
process group) save a checkpoint at the current step and exit 75, as does `stop_after_epoch=N` after epoch N.
Writes RUN/{ckpt.pt, config.json, env.json, log.jsonl}, plots (tensorboard=true: also RUN/tb/) and, once, when
the schedule is finished, RUN/encoders.pt: the run's completion record and the next stage's input (resume state
lives in ckpt.pt). RUN/.lock is held while training: a second trainer on the same folder exits 2.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from sagecast_common import training
from sagecast_common.checkpoint import load_state, save_checkpoint
from sagecast_common.cli import UserError, require
from sagecast_common.config import config_to_dict, option, reject_unused
from sagecast_common.dist import rank_shard
from sagecast_common.encoders import save_encoders
from sagecast_common.progress import progress
from sagecast_common.runio import JsonlLogger, seed_everything
from sagecast_common.schedule import lr_at, set_lr
from sagecast_common.stopping import StopSignals, ignore_stop_signals
from stage1_jea.loss import vicreg_loss
from stage1_jea.model import TwoBranch, encoder_specs
from stage1_jea.optim import build_optimizer
from stage1_jea.plots import plot_training

PROG = "sagecast-stage1-train"
SCHEDULE_KEYS = ("epochs", "epoch_pairs", "batch_size", "base_lr", "warmup_epochs", "final_lr_ratio")


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
    epoch_pairs: int = option(0, "pairs per epoch, a fresh seeded draw from all training pairs each epoch (caps an "
                                 "epoch's cost on many days); 0: every pair", ge=0)
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

    def unused_options(self) -> dict[str, str]:
        """Options that do nothing under this config (see sagecast_common.config.reject_unused)."""
        return {"trust_coefficient": "it is LARS's; optimizer=adamw"} if self.optimizer == "adamw" else {}


PRESETS = {
    # quick: resnet10t at 64 px, 5 epochs, on 2 CPU cores (it beat MobileNetV3-small on retrieval). AdamW (peak lr
    # 2e-3 at batch 64): LARS with eta 0.001 moved weights 7.5e-5 per step, 1.2 % over the run (issue 13). torch's
    # default thread count: on an idle 2-core machine 2 threads ran 62 pairs/s against 41 with threads=1.
    # Projector 256 (4x the batch, VICReg's own ratio): with 1024 the variance term stayed flat (18.7 -> 18.6) and
    # thermal->RGB retrieval was 1.1x aligned random init; with 256 it fell 17.7 -> 15.6 and reached 1.47x
    # (docs/results.md).
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
    reject_unused(cfg)
    return training.launch(lambda env, device, stop: _train(cfg, env, device, stop), run_dir=cfg.run_dir,
                           device=cfg.device)


def train_one_epoch(net, optimizer, loader, *, cfg: Config, env, device, stop: StopSignals, log: JsonlLogger,
                    lr_of, memory_format, autocast, step: int, epoch: int, batches_done: int, steps_per_epoch: int,
                    ckpt: Path) -> dict:
    """One epoch (the rest of it after a mid-epoch resume); stops early when any rank got a stop signal.
    Returns {"step", "batches_done", "loss", "stopped"}."""
    net.train()
    meter, mean_loss, stopped = training.Throughput(), float("nan"), False
    with (training.closing_batches(loader) as batches,
          progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=env.is_main, initial=batches_done,
                   total=steps_per_epoch) as bar):
        for rgb, thermal in bar:
            lr = lr_of(step)
            set_lr(optimizer, lr)
            rgb = rgb.to(device, non_blocking=True, memory_format=memory_format)
            thermal = thermal.to(device, non_blocking=True, memory_format=memory_format)
            with autocast:
                h_rgb, h_thermal, z_rgb, z_thermal = net(rgb, thermal)
            loss, terms = vicreg_loss(z_rgb.float(), z_thermal.float(), sim=cfg.sim_coeff, std=cfg.std_coeff,
                                      cov=cfg.cov_coeff)
            mean_loss, stopped = training.sync_step(loss, stop, env, step=step, epoch=epoch + 1, terms=terms,
                                                    ckpt=ckpt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, batches_done = step + 1, batches_done + 1
            meter.add(rgb.shape[0] * env.world_size)
            if step % cfg.log_every == 0 or batches_done == steps_per_epoch:
                stds = [h.detach().float().std(dim=0).mean().item() for h in (h_rgb, h_thermal)]
                log.log({"step": step, "epoch": epoch + 1, "loss": mean_loss,
                         **{k: v.item() for k, v in terms.items()}, "lr": lr, "emb_std": sum(stds) / 2,
                         "emb_std_rgb": stds[0], "emb_std_thermal": stds[1], "pairs_per_s": meter.rate})
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2g}", pps=f"{meter.rate:.0f}")
            if stopped:  # some rank was asked to stop: all save this step together
                break
    # only the synchronised flag: a signal that reached one rank after the last step is acted on at the next one
    # by all ranks together (one rank leaving alone would leave the others waiting in a collective forever)
    return {"step": step, "batches_done": batches_done, "loss": mean_loss, "stopped": stopped}


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
    # rank_shard is a fresh (seed, epoch) permutation: its first epoch_pairs / world_size are a new draw each epoch
    per_rank_pairs = cfg.epoch_pairs // env.world_size if cfg.epoch_pairs else None
    shard = lambda epoch: rank_shard(len(dataset), rank=env.rank, world_size=env.world_size, seed=cfg.seed,
                                     epoch=epoch)[:per_rank_pairs]
    steps_per_epoch = training.steps_per_epoch(len(shard(0)), per_rank)
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
    training.prepare_run_dir(run, env)
    log = JsonlLogger(run / "log.jsonl", enabled=env.is_main, tensorboard=cfg.tensorboard)
    ckpt = training.resume(run, log, schedule=schedule, force=cfg.force_schedule, is_main=env.is_main)
    if ckpt is not None:
        load_state(model, ckpt["model"], path=run / "ckpt.pt")
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, batches_done = ckpt["step"], ckpt["epoch"], ckpt["batches_done"]
    training.write_run_info(run, cfg, env, device)
    if env.is_main and step < total_steps and (run / "encoders.pt").exists():
        # it records a finished schedule; this one is not (a forced longer schedule): it is written again at the end
        (run / "encoders.pt").unlink()
        print(f"removed {run / 'encoders.pt'}: the schedule is not finished; it is written again when it is")
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = cfg.base_lr * cfg.batch_size / 256
    lr_of = lambda s: lr_at(s, total_steps=total_steps, warmup_steps=warmup_steps, peak=peak_lr,
                            final_ratio=cfg.final_lr_ratio)
    net = torch.compile(model) if cfg.compile else model
    if env.distributed:
        net = DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.bf16 else contextlib.nullcontext()

    def checkpoint():
        if env.is_main:
            save_checkpoint(run / "ckpt.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            step=step, epoch=epoch, batches_done=batches_done, total_steps=total_steps,
                            schedule=schedule, config=config_to_dict(cfg))

    stop_epoch = min(cfg.epochs, cfg.stop_after_epoch or cfg.epochs)
    trained = epoch < stop_epoch
    while epoch < stop_epoch:
        training.seed_epoch(cfg.seed, epoch, env.rank)  # augmentations
        # a fresh copy per epoch, as a worker process would get one: a dataset's own augmentation generator
        # then restarts from (seed, epoch) even with num_workers=0, so resuming at an epoch is bitwise. A
        # mid-epoch resume skips the batches already done (same order), with fresh augmentation draws.
        loader = DataLoader(copy.copy(dataset), batch_size=per_rank, sampler=shard(epoch)[batches_done * per_rank:],
                            drop_last=True, num_workers=cfg.num_workers, worker_init_fn=_init_worker,
                            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 104729 + env.rank),
                            pin_memory=cuda)
        stats = train_one_epoch(net, optimizer, loader, cfg=cfg, env=env, device=device, stop=stop, log=log,
                                lr_of=lr_of, memory_format=memory_format, autocast=autocast, step=step, epoch=epoch,
                                batches_done=batches_done, steps_per_epoch=steps_per_epoch, ckpt=run / "ckpt.pt")
        step, batches_done = stats["step"], stats["batches_done"]
        if stats["stopped"]:
            checkpoint()
            if env.is_main:
                print(f"signal received: saved {run / 'ckpt.pt'} at step {step}; rerun to resume", flush=True)
            return {"step": step, "total_steps": total_steps, "interrupted": True}
        epoch, batches_done = epoch + 1, 0
        checkpoint()
        if env.is_main:
            plot_training(log.read(), run)
            last = log.read()[-1]
            print(f"epoch {epoch}/{cfg.epochs} step {step}/{total_steps} loss {last['loss']:.3f} "
                  f"(inv {last['inv']:.3f} var {last['var']:.3f} cov {last['cov']:.3f}) lr {last['lr']:.3g} "
                  f"emb_std {last['emb_std']:.3f} {last['pairs_per_s']:.1f} pairs/s", flush=True)
    finished = step >= total_steps
    if finished and env.is_main and (trained or not (run / "encoders.pt").exists()):
        meta = {"img_size": img_size, "prepared": str(Path(cfg.prepared).resolve()),
                "norm_stats": json.loads((Path(cfg.prepared) / "norm_stats.json").read_text()),
                "specs": specs, "step": step, "total_steps": total_steps, "epoch": epoch}
        save_encoders(run / "encoders.pt", {"rgb": (model.rgb, specs["rgb"]),
                                             "thermal": (model.thermal, specs["thermal"])}, meta)
    return {"step": step, "total_steps": total_steps, "interrupted": not finished}


def cli(argv: list[str] | None = None) -> None:
    training.run_training_cli(main, Config, PRESETS, prog=PROG, argv=argv)


if __name__ == "__main__":
    cli()
