"""Stage-1 speed: training and export pairs/s, each against a baseline measured in the same run.

    python -m benchmarks.run_all --only stage1
    python -m benchmarks.bench_stage1 --gpu [--out gpu_stage1.md]   # GPU rows only, random tensors, < ~5 min

CPU (always): the quick preset's model (resnet10t ×2, its projector, 64 px, batch 64) on a small
synthetic prepared set made here with `data.synthetic` + `data.prepare`: training steps with DataLoader
workers=1 vs 0 (baseline), and export batched under no_grad vs one pair at a time with autograd on (baseline).
GPU (when CUDA is available): the full preset's model (resnet50 ×2, 8192 projector, 224 px, LARS eta 0.01)
on in-memory random batches: fp32/TF32 (baseline) vs bf16 autocast + channels_last, torch.compile off/on, the
largest per-GPU batch that fits (powers of 2), and a 2-process DDP run (NCCL on 2 GPUs; with one GPU, two
gloo ranks sharing it). Without CUDA the GPU rows say "unmeasured (no GPU)".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
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
from stage1_jea.train import PRESETS


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
    """Pairs/s of full training steps (forward, VICReg loss, backward, optimiser) over the given batches."""
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
            model = TwoBranch(specs=specs, projector_dims=PRESETS["quick"]["projector"])
            loader = DataLoader(Subset(train_set, range(64 * 7)), batch_size=64, num_workers=workers)
            rate = _train_rate(model, build_optimizer(model, name="adamw", weight_decay=0.05), loader,
                               device=torch.device("cpu"))
            rows.append(("train, quick preset (CPU, batch 64)", f"DataLoader workers={workers}", rate))
        export_set = PairedSkyDataset(prepared, None, augment=False, day_only=False)
        encoders = {"rgb": model.rgb, "thermal": model.thermal}
        n = min(len(export_set), 1024)
        batched = {}
        for layout in (False, True, False, True):  # interleaved: the faster of two runs of each layout
            t0 = time.perf_counter()
            extract_features(encoders, Subset(export_set, range(n)), batch_size=256, device=torch.device("cpu"),
                             channels_last=layout)
            batched[layout] = max(batched.get(layout, 0.0), n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(64):  # the naive loop: one pair per forward, autograd left on
            rgb, thermal = export_set[i]
            encoders["rgb"](rgb[None]), encoders["thermal"](thermal[None])
        naive = 64 / (time.perf_counter() - t0)
        rows += [("export (CPU)", "one pair at a time, autograd on", naive),
                 ("export (CPU)", "batch 256, no_grad, contiguous", batched[False]),
                 ("export (CPU)", "batch 256, no_grad, channels_last (the default)", batched[True])]
    return rows


GPU_WHAT = "train, full preset (resnet50 ×2 @ 224, 8192 projector)"
SPECS_224 = dict(rgb_arch="resnet50", thermal_arch="resnet50", img_size=224)


def _full_model(device, *, compile_model: bool = False):
    torch.manual_seed(0)
    model = TwoBranch(specs=encoder_specs(**SPECS_224), projector_dims="8192-8192-8192")
    optimizer = build_optimizer(model, name="lars", weight_decay=1e-6, trust_coefficient=0.01)
    model.to(device)
    return (torch.compile(model) if compile_model else model), optimizer


def _gpu_rate(batch: int, *, fast: bool, compile_model: bool = False, steps: int = 6) -> float:
    device = torch.device("cuda")
    model, optimizer = _full_model(device, compile_model=compile_model)
    data = [(torch.randn(batch, 3, 224, 224, device=device), torch.randn(batch, 1, 224, 224, device=device))]
    # compile: the first two steps (warmup) include the compilation, as in training's first steps
    return _train_rate(model, optimizer, data * steps, device=device, bf16=fast, channels_last=fast,
                       warmup=2 if compile_model else 1)


def _ddp_worker(rank: int, world: int, port: int, batch: int, steps: int, out) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    n_gpu = torch.cuda.device_count()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if n_gpu >= world else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank % n_gpu)
    torch.cuda.set_device(device)
    model, optimizer = _full_model(device)
    model = DistributedDataParallel(model.to(memory_format=torch.channels_last), device_ids=[device.index])
    data = [(torch.randn(batch, 3, 224, 224, device=device), torch.randn(batch, 1, 224, 224, device=device))]
    rate = _train_rate(model, optimizer, data * steps, device=device, bf16=True, channels_last=True)
    if rank == 0:
        out.put(rate * world)  # each rank runs `batch` pairs per step at the same pace
    dist.destroy_process_group()


def _ddp_rate(batch: int, world: int = 2, steps: int = 6) -> float:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(world, port, batch, steps, out), nprocs=world, start_method="spawn")
    return out.get()


def _gpu_rows() -> list[tuple[str, str, float | str]]:
    if not torch.cuda.is_available():
        na = "unmeasured (no GPU)"
        return [(GPU_WHAT, v, na) for v in ("1 GPU, fp32 (TF32), batch 128", "1 GPU, bf16 + channels_last, batch 128",
                                          "1 GPU, bf16 + channels_last + torch.compile, batch 128",
                                          "1 GPU, bf16 + channels_last, largest batch that fits",
                                          "2-process DDP, bf16 + channels_last, batch 128 per rank")]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows: list[tuple[str, str, float | str]] = [
        (GPU_WHAT, "1 GPU, fp32 (TF32), batch 128", _gpu_rate(128, fast=False)),
        (GPU_WHAT, "1 GPU, bf16 + channels_last, batch 128", _gpu_rate(128, fast=True)),
        (GPU_WHAT, "1 GPU, bf16 + channels_last + torch.compile, batch 128",
         _gpu_rate(128, fast=True, compile_model=True))]
    batch, largest = 256, None
    while batch <= 4096:  # doubling until out of memory
        try:
            largest = (batch, _gpu_rate(batch, fast=True, steps=3))
            batch *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if largest:
        rows.append((GPU_WHAT, f"1 GPU, bf16 + channels_last, batch {largest[0]} (largest power of 2 that fits)",
                     largest[1]))
    shared = "" if torch.cuda.device_count() >= 2 else " (both ranks on one GPU, gloo)"
    rows.append((GPU_WHAT, f"2-process DDP{shared}, bf16 + channels_last, batch 128 per rank", _ddp_rate(128)))
    return rows


def _table(rows, *, command: str) -> str:
    base: dict[str, float] = {}
    lines = ["### Stage 1 (VICReg training and export)", "", f"`{command}`", "",
             "| what | variant | pairs/s | × baseline |", "|---|---|---:|---:|"]
    for what, variant, value in rows:
        if isinstance(value, str):
            lines.append(f"| {what} | {variant} | {value} | |")
            continue
        base.setdefault(what, value)  # first variant measured for each task is its baseline
        lines.append(f"| {what} | {variant} | {value:.1f} | {value / base[what]:.2f} |")
    lines += ["", "Baselines: first row of each task. CPU numbers share 2 cores with whatever else runs; the GPU "
              "rows use random in-memory batches (no data loading), so they bound the step time from below. "
              "GPU rows alone: `python -m benchmarks.bench_stage1 --gpu`."]
    return "\n".join(lines)


def run() -> str:
    return _table(_cpu_rows() + _gpu_rows(), command="python -m benchmarks.run_all --only stage1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU rows only (random tensors, no data needed)")
    ap.add_argument("--out", help="also write the Markdown section to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    text = _table(_gpu_rows() if args.gpu else _cpu_rows() + _gpu_rows(),
                  command="python -m benchmarks.bench_stage1" + (" --gpu" if args.gpu else ""))
    text += f"\n\n_bench_stage1: {time.perf_counter() - t0:.0f} s wall_"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
