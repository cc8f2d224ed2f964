"""Stage-2 training: forecast future stage-1 embeddings; one loop for both predictors.

    sagecast-stage2-train --variant detr --preset quick stage1_run=runs/stage1 run_dir=runs/stage2/detr
    sagecast-stage2-train --variant jepa --preset quick stage1_run=runs/stage1 run_dir=runs/stage2/jepa
    torchrun --nproc-per-node 4 -m stage2_forecast.train ...      # DDP when a launcher sets the environment

Reads only files: RUN/embeddings.{parquet,json}, RUN/encoders.pt (jepa) and the prepared dir. Writes
RUN_DIR/config.json, env.json, log.jsonl (one JSON line per log step), ckpt.pt (auto-resumed; holds the
latest and the best-on-val weights, without frozen stage-1 encoders: `load_run` rebuilds those from the
stage-1 run's encoders.pt), loss.png, lr.png (tensorboard=true: also RUN_DIR/tb/) and last, when training is
over, complete.json (best epoch, its val MSE, steps): the run's completion record. The loss is MSE (or
smooth-L1) on standardised targets over valid (horizon, preset) slots; a non-finite loss stops the run
(FloatingPointError). The loop has stage 1's shape and discipline (sagecast_common.training): one lr schedule,
equal batch counts on every rank, SIGTERM/SIGUSR1 → checkpoint at the current step and exit 75 (as after
`stop_after_epoch=N`), a resume over changed data or schedule refused unless force_schedule=true, resume
bitwise at epoch boundaries (mid-epoch: the epoch's remaining samples), RUN_DIR/.lock held while training.
The residual starts from a baseline fitted in closed form on train (stage2_forecast.baselines): the damped
anomaly, or with residual_base=ridge the per-view ridge on the same view context. The best-on-val weights start
as that untrained model and training stops after `patience` epochs without a better val MSE, so a run never
ends worse on val than the baseline it starts from. `train_days=N` trains on the first N train days of a fixed
seeded order (samples.restrict_train_days; nested sets for a learning curve). `motion=PATH` adds the optional
cloud-motion input (samples.read_motion: a table or a data.synthetic raw folder) to the networks and to the
per-view ridge alike; without it the forecasts are those of a run from before the option existed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from sagecast_common import training
from sagecast_common.checkpoint import load_checkpoint, load_state, save_checkpoint
from sagecast_common.cli import UserError, read_json, require
from sagecast_common.config import ConfigError, build_config, config_to_dict, option, reject_unused
from sagecast_common.dist import rank_shard
from sagecast_common.encoders import load_encoders
from sagecast_common.progress import progress
from sagecast_common.runio import JsonlLogger, atomic_write_json, file_sha256, seed_everything
from sagecast_common.schedule import lr_at, set_lr
from sagecast_common.stopping import StopSignals
from stage2_forecast import baselines, samples
from stage2_forecast.advection import LR_SCALE, NO_DECAY
from stage2_forecast.ema import ema_target_terms, ema_update
from stage2_forecast.loss import forecast_loss
from stage2_forecast.models import DetrForecaster, JepaForecaster, frozen_keys
from stage2_forecast.plots import plot_training

PROG = "sagecast-stage2-train"
SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "warmup_steps", "final_lr_ratio")


@dataclass
class Config:
    """Stage-2 forecaster training (variant detr = embeddings transformer, jepa = image encoder + predictor)."""

    variant: Literal["detr", "jepa"] = option("detr", "predictor: detr (embeddings) | jepa (stage-1 encoders)")
    stage1_run: str = option("runs/stage1", "stage-1 run dir (embeddings, encoders)")
    run_dir: str = option("runs/stage2/detr", "output dir; resumes if ckpt.pt exists")
    prepared: str | None = option(None, "prepared dir (default: from embeddings.json)")
    features: Literal["rgb", "thermal", "both", "grid"] = option(
        "both", "target vector: rgb | thermal | both = pooled (concat) | grid (g×g maps, sagecast-stage1-export)")
    horizons_min: tuple[float, ...] = option((5.0, 15.0, 30.0, 60.0), "forecast horizons in minutes")
    context_scans: int = option(3, "T: scans of context", ge=1)
    context_means_min: tuple[float, ...] = option(
        (30.0, 60.0), "also each view's mean over the scans of these last minutes (up to t), as context slots")
    train_days: int | None = option(None, "keep only the first N train days in a fixed seeded order (nested: "
                                    "the 10-day set is inside the 20-day set); val and test are untouched", ge=1)
    motion: str | None = option(None, "cloud-motion input: a parquet/CSV table with columns vsn, timestamp, "
                                "motion_u, motion_v (m/s toward east, north), or a data.synthetic raw folder (its "
                                "truth.parquet files); each view token gets it in its own frame (samples.join_motion)")
    advect: bool = option(True, "with motion: the networks also route each view's cells from where the motion "
                          "says its clouds were (stage2_forecast.advection); false: the motion only as token features")
    advect_from: Literal["scan", "hour"] = option(
        "scan", "what the advection path moves: scan = each context cell's vector | hour = its departure from its "
        "own view's mean over the last context_means_min[-1] minutes, landing on the target view's own mean")
    scan_gap_s: float = option(60.0, "a gap above this between captures starts a scan", gt=0)
    step_min: float | None = option(None, "scan cadence (default: median gap)", gt=0)
    tolerance_min: float | None = option(None, "nearest-scan tolerance (default step/2)", ge=0)
    day_only: bool = option(True, "only daytime targets count")
    day_anchors: bool = option(True, "only anchors with a daytime capture")
    loss: Literal["mse", "smooth_l1"] = option("mse", "training loss on standardised targets")
    target: Literal["frozen", "ema"] = option("frozen", "jepa: frozen stage-1 embeddings | ema encoder")
    ema_momentum: float = option(0.996, "start momentum, rises linearly to 1.0", ge=0)
    vc_weight: float = option(1.0, "variance-covariance weight on the online encoder's embeddings (target=ema)",
                              ge=0)
    finetune: bool = option(False, "jepa: fine-tune the stage-1 encoders")
    residual: bool = option(True, "add the output to a closed-form linear forecast fitted on train")
    residual_base: Literal["auto", "damped", "ridge"] = option(
        "auto", "that forecast: damped = damped anomaly (trainable damping) | ridge = the per-view ridge on the "
        "same view context (fixed) | auto = the one with the lower val MSE (config.json records the choice)")
    width: int = option(128, "transformer width (detr)", ge=1)
    depth: int = option(2, "transformer layers", ge=1)
    heads: int = option(4, "attention heads", ge=1)
    dropout: float = option(0.1, "dropout probability", ge=0)
    jepa_width: int = option(64, "the narrow JEPA predictor's width", ge=1)
    epochs: int = option(30, "training epochs", ge=1)
    batch_size: int = option(32, "global batch (all ranks)", ge=1)
    lr: float = option(3e-4, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = option(0.05, "AdamW weight decay", ge=0)
    warmup_steps: int = option(20, "linear warmup steps", ge=0)
    patience: int = option(5, "stop after this many epochs without a better val MSE", ge=1)
    final_lr_ratio: float = option(0.001, "cosine ends at this fraction of the peak", ge=0)
    seed: int = option(0, "seed of weights, data order and dropout")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: CUDA when available")
    threads: int = option(0, "torch CPU threads (0 = torch default)", ge=0)
    log_every: int = option(10, "steps between log.jsonl lines", ge=1)
    tensorboard: bool = option(False, "also write RUN_DIR/tb/ TensorBoard events (rank 0)")
    stop_after_epoch: int = option(0, "exit (checkpointed, status 75) after this epoch; 0: run all", ge=0)
    force_schedule: bool = option(False, "allow resuming with a changed schedule or data")

    def unused_options(self) -> dict[str, str]:
        """Options that do nothing under this config (see sagecast_common.config.reject_unused)."""
        unused = {}
        if self.variant == "detr":
            unused["finetune"] = "variant=detr has no encoders to fine-tune"
            unused["jepa_width"] = "it is the jepa predictor's width; variant=detr uses width"
        else:
            unused["width"] = "it is the detr transformer's width; variant=jepa uses jepa_width"
        if not self.residual:
            unused["residual_base"] = "residual=false adds no baseline forecast"
        if self.target != "ema":
            unused["ema_momentum"] = unused["vc_weight"] = "they act only with target=ema"
        return unused

    def check(self) -> None:
        """ConfigError for combinations that cannot run."""
        if self.target == "ema" and self.variant != "jepa":
            raise ConfigError("target=ema needs variant=jepa (the detr variant has no encoder to average)")
        if self.target == "ema" and not self.finetune:
            raise ConfigError("target=ema needs finetune=true: with frozen encoders the EMA copy never changes")
        if self.features == "grid" and needs_images(self):
            raise ConfigError("features=grid needs the exported grids: the encoders run here (finetune, "
                              "target=ema) give pooled features")


PRESETS: dict[str, dict] = {
    "quick": {"epochs": 40, "batch_size": 16, "lr": 1e-3, "width": 96, "jepa_width": 64, "depth": 2},
    "full": {"epochs": 100, "batch_size": 128, "width": 256, "jepa_width": 128, "depth": 4, "heads": 8},
}


def load_data(cfg: Config):
    """Scan table (standardised with train statistics), the windows, the train climatology and the closed-form
    damping of the damped-anomaly baseline; the same for every variant."""
    table = samples.load_scan_table(cfg.stage1_run, features=cfg.features, gap_s=cfg.scan_gap_s,
                                    prepared_dir=cfg.prepared)
    samples.restrict_train_days(table, cfg.train_days)
    if cfg.motion is not None:
        samples.join_motion(table, samples.read_motion(cfg.motion), source=f"motion={cfg.motion}")
    mean, std = samples.standardise(table, day_only=cfg.day_only)
    kw = dict(horizons_min=cfg.horizons_min, context_scans=cfg.context_scans, step_min=cfg.step_min,
              tolerance_min=cfg.tolerance_min, day_only=cfg.day_only, day_anchors=cfg.day_anchors)
    wins = {s: samples.build_windows(table, split=s, **kw) for s in ("train", "val", "test")}
    clim = baselines.fit_climatology(table, day_only=cfg.day_only)
    return table, mean, std, wins, clim, baselines.fit_damping_by_day(table, wins["train"], day_only=cfg.day_only)


def _base(cfg: Config) -> str:
    if cfg.residual and cfg.residual_base == "auto":
        raise ValueError("residual_base=auto is resolved on val before the model is built (residual_starts)")
    return cfg.residual_base if cfg.residual else "damped"


def build_model(cfg: Config, mean, std, damping=None) -> nn.Module:
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    damping = None if damping is None else torch.as_tensor(damping)
    if cfg.variant == "detr":
        return DetrForecaster(dim=mean.numel(), n_slots=n_slots(cfg), horizons_min=cfg.horizons_min,
                              width=cfg.width, depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout,
                              residual=cfg.residual, damping=damping, base=_base(cfg), motion=cfg.motion is not None,
                              advect=advect_layout(cfg))
    if cfg.variant == "jepa":
        path = _encoders_path(cfg)
        try:
            modules, meta = load_encoders(path)
        except Exception as e:  # torch.load fails on a damaged file with many types, IndexError among them
            raise UserError(f"cannot load the stage-1 encoders {path} ({type(e).__name__}); rerun "
                            f"`sagecast-stage1-train run_dir={cfg.stage1_run}` to write them again") from e
        names = [column.split("_", 1)[1] for column in samples.FEATURES[cfg.features]]
        return JepaForecaster(encoders=nn.ModuleDict({n: modules[n] for n in names}), mean=mean, std=std,
                              n_slots=n_slots(cfg), horizons_min=cfg.horizons_min, img_size=meta.get("img_size"),
                              width=cfg.jepa_width, depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout,
                              residual=cfg.residual, finetune=cfg.finetune, damping=damping, base=_base(cfg),
                              motion=cfg.motion is not None, advect=advect_layout(cfg))
    raise UserError(f"variant={cfg.variant!r}: expected detr or jepa")


def advect_layout(cfg: Config) -> dict | None:
    """The advection path's settings (None: off, or no motion): the stage-1 layout of the vectors (modalities,
    grid size g from embeddings.json; 1 for pooled features) and the scans of the context."""
    if not (cfg.advect and cfg.motion is not None):
        return None
    g = 1
    if cfg.features == "grid":
        meta = read_json(Path(cfg.stage1_run) / "embeddings.json", what="stage-1 embeddings sidecar",
                         made_by=f"sagecast-stage1-export --run {cfg.stage1_run}")
        g = int(meta["grid"]["g"])
    if cfg.advect_from == "hour" and not cfg.context_means_min:
        raise ValueError("advect_from=hour moves departures from a view's mean: it needs context_means_min")
    return {"modalities": len(samples.FEATURES[cfg.features]), "g": g, "n_scans": cfg.context_scans,
            "motion_slots": n_slots(cfg), "ref_slot": n_slots(cfg) - 1 if cfg.advect_from == "hour" else None}


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups. The damping is the baseline's closed-form fit: weight decay would pull it toward 0
    (climatology). The advection path's few parameters learn at LR_SCALE × the lr (its gate would otherwise need
    most of a short run to open), its geometry without weight decay (it would pull the log-height toward 1 m)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    geometry = {f"advect.{k}" for k in NO_DECAY}
    groups = [{"params": [p for n, p in named if n != "damping" and not n.startswith("advect.")]},
              {"params": [p for n, p in named if n == "damping"], "weight_decay": 0.0}]
    if any(n.startswith("advect.") for n, _ in named):
        groups += [{"params": [p for n, p in named if n in geometry], "weight_decay": 0.0, "lr_scale": LR_SCALE},
                   {"params": [p for n, p in named if n.startswith("advect.") and n not in geometry],
                    "lr_scale": LR_SCALE}]
    return [gr for gr in groups if gr["params"]]


def n_slots(cfg: Config) -> int:
    """K: context slots per view (the scans, then the means)."""
    return cfg.context_scans + len(cfg.context_means_min)


def _encoders_path(cfg: Config) -> Path:
    return require(Path(cfg.stage1_run) / "encoders.pt", what="stage-1 encoders",
                   made_by=f"sagecast-stage1-train run_dir={cfg.stage1_run}")


def _encoders_sha256(cfg: Config) -> str | None:
    """The hash of the stage-1 encoders a frozen JEPA context encoder is rebuilt from (None: nothing rebuilt,
    detr has no encoders and fine-tuned ones are in the checkpoint)."""
    return file_sha256(_encoders_path(cfg)) if cfg.variant == "jepa" and not cfg.finetune else None


def _check_encoders(cfg: Config, saved: str | None, path: Path) -> None:
    if saved is not None and _encoders_sha256(cfg) != saved:
        raise UserError(f"{_encoders_path(cfg)} changed since {path} was trained (the stage-1 run was retrained?): "
                        "its frozen encoders are no longer the ones this run used; train stage 2 again")


def saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores: all but frozen stage-1 encoders (the stage-1 run's encoders.pt)."""
    frozen = frozen_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_run(run_dir: str | Path, *, best: bool = True) -> tuple[Config, nn.Module, dict]:
    """(config, model in eval mode, {mean, std, clim} numpy) from RUN_DIR/ckpt.pt and, for a JEPA run, the
    stage-1 run's encoders.pt (its frozen encoders; refused if that file changed since); best-on-val weights
    by default. The climatology travels with the run: a held-out evaluation uses the training one."""
    path = require(Path(run_dir) / "ckpt.pt", made_by=f"{PROG} run_dir={run_dir}", what="stage-2 checkpoint")
    ckpt = load_checkpoint(path)
    # runs from before residual_base existed started from the damped anomaly
    cfg = build_config(Config, {"residual_base": "damped", **ckpt["config"]})
    _check_encoders(cfg, ckpt.get("encoders_sha256"), path)
    model = build_model(cfg, ckpt["mean"], ckpt["std"])
    load_state(model, ckpt["best_model" if best else "model"], path=path, optional=frozen_keys(model))
    return cfg, model.eval(), {k: ckpt[k].numpy() for k in ("mean", "std", "clim")}


def residual_starts(cfg: Config, table, wins, clim, damping) -> tuple[Config, dict[str, np.ndarray]]:
    """The config with residual_base resolved, and the {"train", "val"} ridge forecasts when it is ridge.

    auto compares the two starts on val, the split early stopping and the ridge penalty already use: the
    learned variants should start from the strongest linear baseline, and which one that is depends on the
    data (on `make compare` the ridge; on the quick default's 2 train days, see docs/results.md).
    """
    if not cfg.residual or cfg.residual_base == "damped":
        return cfg, {}
    starts = baselines.ridge_start(table, wins, means_min=cfg.context_means_min, day_only=cfg.day_only,
                                   cache=ridge_cache(cfg, table))[0]
    if cfg.residual_base == "auto":
        b = samples.gather(table, wins["val"], np.arange(len(wins["val"])), day_only=cfg.day_only, clim=clim,
                           means_min=None)
        m, true = b["tgt_mask"].numpy(), b["tgt_z"].numpy()
        mse = {name: float((((pred - true) ** 2).mean(-1) * m).sum() / max(m.sum(), 1))
               for name, pred in (("ridge", starts["val"]), ("damped", baselines.damped_forecast(b, damping)))}
        chosen = "ridge" if mse["ridge"] < mse["damped"] else "damped"
        print(f"residual_base=auto: {chosen} (val MSE ridge {mse['ridge']:.4f}, damped anomaly {mse['damped']:.4f})")
        cfg = dataclasses.replace(cfg, residual_base=chosen)
    return cfg, starts if cfg.residual_base == "ridge" else {}


# The settings that decide the scan table, the windows and hence the per-view ridge (not the model's).
SAMPLE_KEYS = ("features", "horizons_min", "scan_gap_s", "step_min", "tolerance_min", "day_only", "day_anchors",
               "context_scans", "context_means_min", "train_days", "motion")


def ridge_cache(cfg: Config, table: samples.ScanTable) -> Path:
    """STAGE1_RUN/ridge_cache/<key>: where the per-view ridge of these embeddings and sample settings is kept
    (baselines.view_ridge_fits), shared by every stage-2 run and evaluation on them. The key hashes the
    embeddings, the prepared index and the motion table (a re-export, re-prepare or new table gives a new key)
    with the sample settings."""
    settings = {k: getattr(cfg, k) for k in SAMPLE_KEYS}
    settings["embeddings"] = file_sha256(Path(cfg.stage1_run) / "embeddings.parquet")
    settings["index"] = file_sha256(Path(table.prepared_dir) / "index.parquet")
    if cfg.motion is not None:  # the table's content, not only its path: a table edited in place refits
        settings["motion_sha256"] = [file_sha256(f) for f in samples.motion_files(cfg.motion)]
    return Path(cfg.stage1_run) / "ridge_cache" / baselines.ridge_cache_key(settings)


def needs_images(cfg: Config) -> bool:
    """Images are decoded only when encoders run: fine-tuning, or EMA targets. Frozen = cached embeddings."""
    return cfg.variant == "jepa" and (cfg.finetune or cfg.target == "ema")


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def main(cfg: Config) -> dict:
    cfg.check()
    reject_unused(cfg)
    return training.launch(lambda env, device, stop: _train(cfg, env, device, stop), run_dir=cfg.run_dir,
                           device=cfg.device)


def _train_batches(table, win, order, *, first: int, steps: int, per_rank: int, cfg: Config, clim, base,
                   target_images: bool, device):
    """The epoch's batches from `first` on, gathered in this process (the windows index the scan table)."""
    for b in range(first, steps):
        yield to_device(samples.gather(table, win, np.asarray(order[b * per_rank:(b + 1) * per_rank]),
                                       day_only=cfg.day_only, clim=clim, images=needs_images(cfg),
                                       target_images=target_images, base=base,
                                       means_min=cfg.context_means_min), device)


def train_one_epoch(model, ddp, opt, ema, batches, *, cfg: Config, env, stop: StopSignals, log: JsonlLogger,
                    lr_of, step: int, epoch: int, batches_done: int, steps_per_epoch: int, total_steps: int,
                    ckpt: Path) -> dict:
    """One epoch (the rest of it after a mid-epoch resume); stops early when any rank got a stop signal.
    Returns {"step", "batches_done", "loss", "stopped"}."""
    model.train()
    meter, mean_loss, stopped = training.Throughput(), float("nan"), False
    with (training.closing_batches(batches) as source,
          progress(source, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=env.is_main, initial=batches_done,
                   total=steps_per_epoch) as bar):
        for batch in bar:
            lr = lr_of(step)
            set_lr(opt, lr)
            pred = ddp(batch)
            target = batch["tgt_z"]
            if ema is not None:
                target, vc, vc_terms = ema_target_terms(model, ema, batch)
            loss, terms = forecast_loss(pred, target, batch["tgt_mask"], kind=cfg.loss)
            if ema is not None:
                loss, terms = loss + cfg.vc_weight * vc, {**terms, **vc_terms}
            mean_loss, stopped = training.sync_step(loss, stop, env, step=step, epoch=epoch + 1, terms=terms,
                                                    ckpt=ckpt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                m = cfg.ema_momentum + (1 - cfg.ema_momentum) * step / max(1, total_steps)
                ema_update(ema, model.encoders, momentum=m)
            step, batches_done = step + 1, batches_done + 1
            meter.add(cfg.batch_size)
            if step % cfg.log_every == 0:
                log.log({"step": step, "epoch": epoch + 1, "lr": lr, "loss": mean_loss, **terms,
                         "samples_per_s": meter.rate})
            if stopped:  # some rank was asked to stop: all save this step together
                break
    return {"step": step, "batches_done": batches_done, "loss": mean_loss, "stopped": stopped}


@torch.no_grad()
def validate(model, table, win, cfg: Config, device, clim, base=None) -> dict[str, float]:
    """Validation MSE of the model and of persistence on the same valid slots."""
    model.eval()
    err = per = n = 0.0
    for start in range(0, len(win), cfg.batch_size):
        b = to_device(samples.gather(table, win, np.arange(start, min(start + cfg.batch_size, len(win))),
                                     day_only=cfg.day_only, clim=clim, images=needs_images(cfg), base=base,
                                     means_min=cfg.context_means_min), device)
        m = b["tgt_mask"].float()
        err += (((model(b) - b["tgt_z"]) ** 2).mean(-1) * m).sum().item()
        per += (((b["ctx_z"][:, None, 0] - b["tgt_z"]) ** 2).mean(-1) * m).sum().item()
        n += m.sum().item()
    model.train()
    return {"val_mse": err / max(n, 1), "val_mse_persistence": per / max(n, 1),
            "val_skill": 1 - err / per if per > 0 else float("nan")}


def _train(cfg: Config, env, device: torch.device, stop: StopSignals) -> dict:
    if cfg.batch_size % env.world_size:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by the world size {env.world_size}")
    require(Path(cfg.stage1_run) / "embeddings.parquet", what="stage-1 embeddings",
            made_by=f"sagecast-stage1-export --run {cfg.stage1_run}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + env.rank)
    run, per_rank = Path(cfg.run_dir), cfg.batch_size // env.world_size
    table, mean, std, wins, clim, damping = load_data(cfg)
    cfg, starts = residual_starts(cfg, table, wins, clim, damping)
    n_train = len(wins["train"])
    shard = lambda epoch: rank_shard(n_train, rank=env.rank, world_size=env.world_size, seed=cfg.seed, epoch=epoch)
    steps_per_epoch = training.steps_per_epoch(len(shard(0)), per_rank)
    if steps_per_epoch == 0:
        raise UserError(f"{n_train} training samples from {cfg.stage1_run} are fewer than one batch "
                        f"({per_rank}/rank on {env.world_size} rank(s)): check splits, horizons and day_only, or "
                        "lower batch_size")
    model = build_model(cfg, mean, std, damping).to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if env.distributed else model
    # The damping is the baseline's closed-form fit: weight decay would pull it toward 0 (climatology).
    opt = torch.optim.AdamW(param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(model.encoders).requires_grad_(False).eval() if cfg.target == "ema" else None
    total = cfg.epochs * steps_per_epoch
    schedule = {"total_steps": total, "steps_per_epoch": steps_per_epoch, "train_samples": n_train,
                **{k: getattr(cfg, k) for k in SCHEDULE_KEYS}}
    step, epoch, batches_done, best_epoch, best_model = 0, 0, 0, 0, copy.deepcopy(saved_state(model))
    # The untrained model (= the baseline it starts from) is the first candidate for the best weights.
    best_val = validate(model, table, wins["val"], cfg, device, clim, starts.get("val"))["val_mse"] if len(
        wins["val"]) else 0.0
    encoders_sha256 = _encoders_sha256(cfg)
    training.prepare_run_dir(run, env)
    log = JsonlLogger(run / "log.jsonl", enabled=env.is_main, tensorboard=cfg.tensorboard)
    ckpt = training.resume(run, log, schedule=schedule, force=cfg.force_schedule, device=device, is_main=env.is_main)
    if ckpt is not None:
        _check_encoders(cfg, ckpt.get("encoders_sha256"), run / "ckpt.pt")
        load_state(model, ckpt["model"], path=run / "ckpt.pt", optional=frozen_keys(model))
        opt.load_state_dict(ckpt["optimizer"])
        step, epoch, batches_done = ckpt["step"], ckpt["epoch"], ckpt["batches_done"]
        best_val, best_model, best_epoch = ckpt["best_val"], ckpt["best_model"], ckpt["best_epoch"]
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    training.write_run_info(run, cfg, env, device)
    done = lambda: epoch >= cfg.epochs or epoch - best_epoch >= cfg.patience  # noqa: E731
    if env.is_main and not done():
        (run / "complete.json").unlink(missing_ok=True)  # a forced longer schedule: not complete any more

    def checkpoint():
        if env.is_main:
            save_checkpoint(run / "ckpt.pt", model=saved_state(model), optimizer=opt.state_dict(), step=step,
                            epoch=epoch, batches_done=batches_done, schedule=schedule, config=config_to_dict(cfg),
                            mean=torch.as_tensor(mean), std=torch.as_tensor(std), clim=torch.as_tensor(clim),
                            best_val=best_val, best_epoch=best_epoch, best_model=best_model,
                            ema=ema.state_dict() if ema is not None else {}, encoders_sha256=encoders_sha256)

    if env.is_main:
        print(f"{cfg.variant}: {n_train} train / {len(wins['val'])} val samples, "
              f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")
    lr_of = lambda s: lr_at(s, total_steps=total, warmup_steps=cfg.warmup_steps, peak=cfg.lr,  # noqa: E731
                            final_ratio=cfg.final_lr_ratio)
    stop_epoch = min(cfg.epochs, cfg.stop_after_epoch or cfg.epochs)
    while epoch < stop_epoch and not done():
        training.seed_epoch(cfg.seed, epoch, env.rank)  # dropout
        batches = _train_batches(table, wins["train"], shard(epoch), first=batches_done, steps=steps_per_epoch,
                                 per_rank=per_rank, cfg=cfg, clim=clim, base=starts.get("train"),
                                 target_images=ema is not None, device=device)
        stats = train_one_epoch(model, ddp, opt, ema, batches, cfg=cfg, env=env, stop=stop, log=log, lr_of=lr_of,
                                step=step, epoch=epoch, batches_done=batches_done, steps_per_epoch=steps_per_epoch,
                                total_steps=total, ckpt=run / "ckpt.pt")
        step, batches_done = stats["step"], stats["batches_done"]
        if stats["stopped"]:
            checkpoint()
            if env.is_main:
                print(f"signal received: saved {run / 'ckpt.pt'} at step {step}; rerun to resume", flush=True)
            return {"step": step, "epoch": epoch, "total_steps": total, "best_val_mse": best_val, "interrupted": True}
        epoch, batches_done = epoch + 1, 0
        val = validate(model, table, wins["val"], cfg, device, clim, starts.get("val")) if len(wins["val"]) else {}
        if val.get("val_mse", 0.0) < best_val or not len(wins["val"]):
            best_val, best_epoch, best_model = val.get("val_mse", 0.0), epoch, copy.deepcopy(saved_state(model))
        checkpoint()
        if env.is_main:
            log.log({"step": step, "epoch": epoch, "loss": stats["loss"], **val})
            print(f"epoch {epoch}/{cfg.epochs} step {step}/{total} loss {stats['loss']:.4f} "
                  + " ".join(f"{k} {v:.4f}" for k, v in val.items()), flush=True)
    if env.is_main:
        plot_training(log.read(), run)
        if done():  # the completion record, last
            atomic_write_json(run / "complete.json", {"best_epoch": best_epoch, "best_val_mse": best_val,
                                                      "epoch": epoch, "step": step, "total_steps": total,
                                                      "early_stopped": epoch < cfg.epochs})
    return {"step": step, "epoch": epoch, "total_steps": total, "best_val_mse": best_val, "best_epoch": best_epoch,
            "interrupted": not done()}


def cli(argv: list[str] | None = None) -> None:
    training.run_training_cli(main, Config, PRESETS, prog=PROG, argv=argv)


if __name__ == "__main__":
    cli()
