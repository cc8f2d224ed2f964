"""Stage-2 training: forecast future stage-1 embeddings; one loop for both predictors.

    python -m stage2_forecast.train --variant detr --preset quick stage1_run=runs/stage1 run_dir=runs/stage2/detr
    python -m stage2_forecast.train --variant jepa --preset quick stage1_run=runs/stage1 run_dir=runs/stage2/jepa
    torchrun --nproc-per-node 4 -m stage2_forecast.train ...      # DDP when a launcher sets the environment

Reads only files: RUN/embeddings.{parquet,json}, RUN/encoders.pt (jepa) and the prepared dir. Writes
RUN_DIR/config.json, env.json, log.jsonl (one JSON line per log step), ckpt.pt (auto-resumed; holds the
latest and the best-on-val weights), loss.png, lr.png. The loss is MSE (or smooth-L1) on standardised
targets over valid (horizon, preset) slots; a non-finite loss stops the run. The residual starts from the
damped-anomaly baseline fitted in closed form on train (stage2_forecast.baselines); the best-on-val weights
start as that untrained model and training stops after `patience` epochs without a better val MSE, so a run
never ends worse on val than the baseline it starts from.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.formats import SKY_PRESETS
from sagecast_common.config import build_config, config_to_dict, parse_config
from sagecast_common.dist import launch_env, setup, teardown
from sagecast_common.encoders import load_encoders
from sagecast_common.runio import JsonlLogger, atomic_path, atomic_write_json, environment_info, seed_everything
from stage2_forecast import baselines, samples
from stage2_forecast.ema import ema_target_terms, ema_update, variance_covariance  # noqa: F401  (re-exported)
from stage2_forecast.models import DetrForecaster, JepaForecaster
from stage2_forecast.plots import plot_training


@dataclass
class Config:
    """Stage-2 forecaster training (variant detr = embeddings transformer, jepa = image encoder + predictor)."""

    variant: str = field(default="detr", metadata={"help": "detr | jepa"})
    stage1_run: str = field(default="runs/stage1", metadata={"help": "stage-1 run dir (embeddings, encoders)"})
    run_dir: str = "runs/stage2/detr"
    prepared: str | None = field(default=None, metadata={"help": "prepared dir (default: from embeddings.json)"})
    features: str = field(default="both", metadata={"help": "target vector: rgb | thermal | both = pooled (concat) "
                                                                 "| grid (g×g feature maps, stage1_jea.export)"})
    horizons_min: tuple[float, ...] = (5.0, 15.0, 30.0, 60.0)
    context_scans: int = field(default=3, metadata={"help": "T: scans of context (detr)"})
    scan_gap_s: float = field(default=60.0, metadata={"help": "a gap above this between captures starts a scan"})
    step_min: float | None = field(default=None, metadata={"help": "scan cadence (default: median gap)"})
    tolerance_min: float | None = field(default=None, metadata={"help": "nearest-scan tolerance (default step/2)"})
    day_only: bool = field(default=True, metadata={"help": "only daytime targets count"})
    day_anchors: bool = field(default=True, metadata={"help": "only anchors with a daytime capture"})
    loss: str = field(default="mse", metadata={"help": "mse | smooth_l1"})
    target: str = field(default="frozen", metadata={"help": "jepa: frozen stage-1 embeddings | ema encoder"})
    ema_momentum: float = field(default=0.996, metadata={"help": "start momentum, rises linearly to 1.0"})
    vc_weight: float = field(default=1.0, metadata={"help": "variance-covariance weight on the online encoder's "
                                                             "embeddings (target=ema)"})
    finetune: bool = field(default=False, metadata={"help": "jepa: fine-tune the stage-1 encoders"})
    residual: bool = field(default=True, metadata={"help": "predict the change from the current embedding"})
    width: int = 128
    depth: int = 2
    heads: int = 4
    dropout: float = 0.1
    jepa_width: int = field(default=64, metadata={"help": "the narrow JEPA predictor's width"})
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    patience: int = field(default=5, metadata={"help": "stop after this many epochs without a better val MSE"})
    seed: int = 0
    device: str = "auto"
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    log_every: int = 10


PRESETS: dict[str, dict] = {
    "quick": {"epochs": 40, "batch_size": 16, "lr": 1e-3, "width": 96, "jepa_width": 64, "depth": 2},
    "full": {"epochs": 100, "batch_size": 128, "width": 256, "jepa_width": 128, "depth": 4, "heads": 8},
}


def forecast_loss(pred, target, mask, *, kind: str = "mse") -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over valid (B, H, P) slots of the per-dimension loss; pred/target (B, H, P, D), mask (B, H, P)."""
    per = (F.mse_loss if kind == "mse" else F.smooth_l1_loss)(pred, target, reduction="none").mean(-1)
    loss = (per * mask).sum() / mask.sum().clamp(min=1)
    return loss, {kind: loss.item()}


def lr_at(step: int, total: int, *, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def load_data(cfg: Config):
    """Scan table (standardised with train statistics), the windows, the train climatology and the closed-form
    damping of the damped-anomaly baseline; the same for every variant."""
    table = samples.load_scan_table(cfg.stage1_run, features=cfg.features, gap_s=cfg.scan_gap_s,
                                    prepared_dir=cfg.prepared)
    mean, std = samples.standardise(table, day_only=cfg.day_only)
    kw = dict(horizons_min=cfg.horizons_min, context_scans=cfg.context_scans, step_min=cfg.step_min,
              tolerance_min=cfg.tolerance_min, day_only=cfg.day_only, day_anchors=cfg.day_anchors)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val", "test")}
    clim = baselines.fit_climatology(table, day_only=cfg.day_only)
    train = samples.gather(table, wins["train"], np.arange(len(wins["train"])), day_only=cfg.day_only, clim=clim)
    return table, mean, std, wins, clim, baselines.fit_damping(train)


def build_model(cfg: Config, mean, std, damping=None) -> nn.Module:
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    damping = None if damping is None else torch.as_tensor(damping)
    if cfg.variant == "detr":
        return DetrForecaster(dim=mean.numel(), n_presets=len(SKY_PRESETS), horizons_min=cfg.horizons_min,
                              width=cfg.width, depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout,
                              residual=cfg.residual, damping=damping)
    if cfg.variant == "jepa":
        modules, meta = load_encoders(Path(cfg.stage1_run) / "encoders.pt")
        names = [column.split("_", 1)[1] for column in samples.FEATURES[cfg.features]]
        return JepaForecaster(encoders=nn.ModuleDict({n: modules[n] for n in names}), mean=mean, std=std,
                              n_presets=len(SKY_PRESETS), horizons_min=cfg.horizons_min, img_size=meta.get("img_size"),
                              width=cfg.jepa_width, depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout,
                              residual=cfg.residual, finetune=cfg.finetune, damping=damping)
    raise ValueError(f"variant={cfg.variant!r}: expected detr or jepa")


def load_run(run_dir: str | Path, *, best: bool = True) -> tuple[Config, nn.Module, dict]:
    """(config, model in eval mode, {mean, std, clim} numpy) from RUN_DIR/ckpt.pt alone; best-on-val weights
    by default. The climatology travels with the run: a held-out evaluation uses the training one."""
    ckpt = torch.load(Path(run_dir) / "ckpt.pt", map_location="cpu", weights_only=True)
    cfg = build_config(Config, ckpt["config"])
    model = build_model(cfg, ckpt["mean"], ckpt["std"])
    model.load_state_dict(ckpt["best_model" if best else "model"])
    return cfg, model.eval(), {k: ckpt[k].numpy() for k in ("mean", "std", "clim")}


def needs_images(cfg: Config) -> bool:
    """Images are decoded only when encoders run: fine-tuning, or EMA targets. Frozen = cached embeddings."""
    return cfg.variant == "jepa" and (cfg.finetune or cfg.target == "ema")


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model, table, win, cfg, device, clim) -> dict[str, float]:
    """Validation MSE of the model and of persistence on the same valid slots."""
    model.eval()
    err = per = n = 0.0
    for start in range(0, len(win), cfg.batch_size):
        b = to_device(samples.gather(table, win, np.arange(start, min(start + cfg.batch_size, len(win))),
                                     day_only=cfg.day_only, clim=clim, images=needs_images(cfg)), device)
        m = b["tgt_mask"].float()
        err += (((model(b) - b["tgt_z"]) ** 2).mean(-1) * m).sum().item()
        per += (((b["ctx_z"][:, None, 0] - b["tgt_z"]) ** 2).mean(-1) * m).sum().item()
        n += m.sum().item()
    model.train()
    return {"val_mse": err / max(n, 1), "val_mse_persistence": per / max(n, 1),
            "val_skill": 1 - err / per if per > 0 else float("nan")}


def main(cfg: Config) -> dict:
    env = launch_env()
    device = setup(env, device=cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + env.rank)
    run = Path(cfg.run_dir)
    if cfg.variant not in ("detr", "jepa"):
        raise ValueError(f"variant={cfg.variant!r}: expected detr or jepa")
    if cfg.target not in ("frozen", "ema") or (cfg.target == "ema" and cfg.variant != "jepa"):
        raise ValueError(f"target={cfg.target!r}: 'frozen', or 'ema' with variant=jepa")
    if cfg.target == "ema" and not cfg.finetune:
        print("target=ema needs finetune=true: with frozen encoders the EMA copy never changes", file=sys.stderr)
        raise SystemExit(2)
    if cfg.features == "grid" and needs_images(cfg):
        raise ValueError("features=grid needs the exported grids: the encoders run here (finetune, target=ema) "
                         "give pooled features")
    table, mean, std, wins, clim, damping = load_data(cfg)
    if len(wins["train"]) == 0:
        raise ValueError(f"no training samples from {cfg.stage1_run}: check splits, horizons and day_only")
    model = build_model(cfg, mean, std, damping).to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if env.distributed else model
    # The damping is the baseline's closed-form fit: weight decay would pull it toward 0 (climatology).
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n != "damping"]
    opt = torch.optim.AdamW([{"params": decay}, {"params": [model.damping], "weight_decay": 0.0}], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(model.encoders).requires_grad_(False).eval() if cfg.target == "ema" else None
    per_rank = math.ceil(len(wins["train"]) / env.world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step, epoch, best_epoch, best_model = 0, 0, 0, copy.deepcopy(model.state_dict())
    # The untrained model (= the damped-anomaly baseline) is the first candidate for the best weights.
    best_val = evaluate_loss(model, table, wins["val"], cfg, device, clim)["val_mse"] if len(wins["val"]) else 0.0
    if (run / "ckpt.pt").exists():  # auto-resume; a broken checkpoint raises rather than restarting silently
        ckpt = torch.load(run / "ckpt.pt", map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, epoch, best_val, best_model = ckpt["step"], ckpt["epoch"], ckpt["best_val"], ckpt["best_model"]
        best_epoch = ckpt["best_epoch"]
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        print(f"resumed {run / 'ckpt.pt'} at epoch {epoch}, step {step}")
    log = JsonlLogger(run / "log.jsonl", enabled=env.is_main)
    if env.is_main:
        atomic_write_json(run / "config.json", config_to_dict(cfg))
        atomic_write_json(run / "env.json", environment_info())
        print(f"{cfg.variant}: {len(wins['train'])} train / {len(wins['val'])} val samples, "
              f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")
    model.train()
    t0 = time.perf_counter()
    while epoch < cfg.epochs and epoch - best_epoch < cfg.patience:
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(wins["train"]))[env.rank::env.world_size]
        for start in range(0, len(order), cfg.batch_size):
            lr = lr_at(step, total, lr=cfg.lr, warmup=cfg.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = to_device(samples.gather(table, wins["train"], order[start:start + cfg.batch_size],
                                             day_only=cfg.day_only, clim=clim, images=needs_images(cfg),
                                             target_images=ema is not None), device)
            pred = ddp(batch)
            target = batch["tgt_z"]
            if ema is not None:
                target, vc, vc_terms = ema_target_terms(model, ema, batch)
            loss, terms = forecast_loss(pred, target, batch["tgt_mask"], kind=cfg.loss)
            if ema is not None:
                loss, terms = loss + cfg.vc_weight * vc, {**terms, **vc_terms}
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: stopping ({terms})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                m = cfg.ema_momentum + (1 - cfg.ema_momentum) * step / max(1, total)
                ema_update(ema, model.encoders, momentum=m)
            if step % cfg.log_every == 0:
                log.log({"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(), **terms,
                         "samples_per_s": (step + 1) * cfg.batch_size / (time.perf_counter() - t0)})
            step += 1
        epoch += 1
        val = evaluate_loss(model, table, wins["val"], cfg, device, clim) if len(wins["val"]) else {}
        if val.get("val_mse", 0.0) < best_val or not len(wins["val"]):
            best_val, best_epoch, best_model = val.get("val_mse", 0.0), epoch, copy.deepcopy(model.state_dict())
        if env.is_main:
            log.log({"step": step, "epoch": epoch, "loss": loss.item(), **val})
            print(f"epoch {epoch}/{cfg.epochs} step {step} loss {loss.item():.4f} "
                  + " ".join(f"{k} {v:.4f}" for k, v in val.items()), flush=True)
            with atomic_path(run / "ckpt.pt") as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch,
                            "config": config_to_dict(cfg), "mean": torch.as_tensor(mean),
                            "std": torch.as_tensor(std), "clim": torch.as_tensor(clim), "best_val": best_val,
                            "best_epoch": best_epoch, "best_model": best_model,
                            "ema": ema.state_dict() if ema is not None else {}}, tmp)
    if env.is_main:
        plot_training(log.read(), run)
    teardown()
    return {"step": step, "epoch": epoch, "best_val_mse": best_val, "best_epoch": best_epoch}


def cli(argv: list[str]) -> Config:
    """`--variant detr` is accepted as well as `variant=detr`."""
    argv = [f"variant={argv[i + 1]}" if a == "--variant" and i + 1 < len(argv) else a
            for i, a in enumerate(argv) if not (i > 0 and argv[i - 1] == "--variant")]
    return parse_config(Config, argv, presets=PRESETS, prog="python -m stage2_forecast.train")


if __name__ == "__main__":
    main(cli(sys.argv[1:]))
