"""Stage-1 speed: training and export pairs/s, each against a baseline measured in the same run.

    python -m benchmarks.run_all --only stage1

CPU (always): the quick preset's model (resnet10t ×2, 1024-1024-1024 projector, 64 px, batch 64) on a small
synthetic prepared set made here with `data.synthetic` + `data.prepare`: training steps with DataLoader
workers=1 vs 0 (baseline), and export batched under no_grad vs one pair at a time with autograd on (baseline).
GPU (when CUDA is available): the full preset's model (resnet50 ×2, 8192 projector, 224 px) on in-memory
random batches — fp32 (baseline) vs bf16 autocast + channels_last — and the largest per-GPU batch that fits.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from sagecast_common.schedule import set_lr
from stage1_jea.export import extract_features
from stage1_jea.loss import vicreg_loss
from stage1_jea.model import TwoBranch, encoder_specs
from stage1_jea.optim import build_optimizer


def _make_prepared(tmp: Path) -> Path:
    raw, prepared = tmp / "raw", tmp / "prepared"
    py = sys.executable
    subprocess.run([py, "-m", "data.synthetic", "--out", str(raw), "--nodes", "W056", "--start", "2023-05-18",
                    "--days", "3", "--interval-min", "30", "--seed", "0", "--size", "small"],
                   check=True, capture_output=True)
    subprocess.run([py, "-m", "data.prepare", "--raw", str(raw), "--out", str(prepared), "--size", "64"],
                   check=True, capture_output=True)
    return prepared


def _train_rate(model, optimizer, batches, *, device, bf16=False, channels_last=False, warmup=1) -> float:
    """Pairs/s of full training steps (forward, VICReg loss, backward, LARS) over the given batches."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    set_lr(optimizer, 0.01)
    pairs, t0 = 0, None
    for i, (rgb, thermal) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, pairs = time.perf_counter(), 0
        with autocast:
            _, _, z_rgb, z_thermal = model(rgb.to(device, memory_format=fmt), thermal.to(device, memory_format=fmt))
        loss, _ = vicreg_loss(z_rgb.float(), z_thermal.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pairs += rgb.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - t0)


def _cpu_rows() -> list[tuple[str, str, float]]:
    from data import PairedSkyDataset

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _make_prepared(Path(tmp))
        train_set = PairedSkyDataset(prepared, None, augment=True, day_only=False)
        specs = encoder_specs("resnet10t", "resnet10t", img_size=64)
        for workers in (0, 1):
            torch.manual_seed(0)
            model = TwoBranch(specs=specs, projector_dims="1024-1024-1024")
            loader = DataLoader(Subset(train_set, range(64 * 7)), batch_size=64, num_workers=workers)
            rate = _train_rate(model, build_optimizer(model, name="lars", weight_decay=1e-6), loader,
                               device=torch.device("cpu"))
            rows.append(("train, quick preset (CPU, batch 64)", f"DataLoader workers={workers}", rate))
        export_set = PairedSkyDataset(prepared, None, augment=False, day_only=False)
        encoders = {"rgb": model.rgb, "thermal": model.thermal}
        n = min(len(export_set), 1024)
        t0 = time.perf_counter()
        extract_features(encoders, Subset(export_set, range(n)), batch_size=256, device=torch.device("cpu"))
        batched = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(64):  # the naive loop: one pair per forward, autograd left on
            rgb, thermal = export_set[i]
            encoders["rgb"](rgb[None]), encoders["thermal"](thermal[None])
        naive = 64 / (time.perf_counter() - t0)
        rows += [("export (CPU)", "one pair at a time, autograd on", naive),
                 ("export (CPU)", "batch 256, no_grad", batched)]
    return rows


def _gpu_rows() -> list[tuple[str, str, float]]:
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    specs = encoder_specs("resnet50", "resnet50", img_size=224)

    def rate(batch: int, fast: bool, steps: int = 6) -> float:
        torch.manual_seed(0)
        model = TwoBranch(specs=specs, projector_dims="8192-8192-8192")
        data = [(torch.randn(batch, 3, 224, 224), torch.randn(batch, 1, 224, 224))] * steps
        return _train_rate(model, build_optimizer(model, name="lars", weight_decay=1e-6), data, device=device,
                           bf16=fast, channels_last=fast)

    what = "train, full preset (1 GPU)"
    rows = [(what, "fp32 (TF32), batch 128", rate(128, False)),
            (what, "bf16 + channels_last, batch 128", rate(128, True))]
    batch, largest = 256, None
    while batch <= 4096:  # doubling until out of memory
        try:
            largest = (batch, rate(batch, True, 3))
            batch *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if largest:
        rows.append((what, f"bf16 + channels_last, batch {largest[0]} (largest power of 2 that fits)", largest[1]))
    return rows


def run() -> str:
    rows = _cpu_rows() + (_gpu_rows() if torch.cuda.is_available() else [])
    base: dict[str, float] = {}
    lines = ["### Stage 1 (VICReg training and export)", "", "`python -m benchmarks.run_all --only stage1`", "",
             "| what | variant | pairs/s | × baseline |", "|---|---|---:|---:|"]
    for what, variant, value in rows:
        base.setdefault(what, value)  # first variant measured for each task is its baseline
        lines.append(f"| {what} | {variant} | {value:.1f} | {value / base[what]:.2f} |")
    lines += ["", "Baselines: first row of each task. CPU numbers share 2 cores with whatever else runs; the GPU "
              "rows use random in-memory batches (no data loading), so they bound the step time from below."]
    return "\n".join(lines)
