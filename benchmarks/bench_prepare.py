"""Data preparation speed: `python -m benchmarks.run_all --only prepare`.

Three measurements, each against a baseline timed in the same run: read_thermal_csv vs np.loadtxt on a
336×252 file; one prepare worker (reduced-scale JPEG decode + crop + resize, fast CSV) vs the naive path
(full 6144×2048 decode + crop + resize + np.loadtxt) on full-size files in the synthetic formats; and
PairedSkyDataset samples/s with augmentations through a DataLoader with 1 worker. Also the one-off cost of
the first read_thermal_csv in a fresh process: numba loading the compiled parser from its cache, and
compiling it into an empty cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data.formats import format_thermal_csv, read_thermal_csv, rgb_name, thermal_fov_box, thermal_name
from data.prepare.images import process_pair

SIZE = 128


def _best(fn, repeat: int) -> float:
    """Best-of-`repeat` seconds (the machine is shared; the minimum is the least disturbed run)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _full_size_files(folder: Path, n: int) -> list[dict]:
    """n pairs of 6144×2048 JPG (smooth sky-like texture) + 336×252 thermal CSV."""
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n):
        coarse = rng.uniform(0, 255, (16, 48, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((6144, 2048), Image.Resampling.BICUBIC)
        rgb = folder / f"{i}-{rgb_name(6144, 2048, 1)}"
        img.save(rgb, quality=90)
        th = folder / f"{i}-{thermal_name(1)}"
        th.write_text(format_thermal_csv(rng.uniform(-60, 30, (252, 336))))
        jobs.append({"rgb_path": str(rgb), "rgb_rel": rgb.name, "thermal_path": str(th), "thermal_rel": th.name,
                     "size": SIZE, "crop": "fov"})
    return jobs


def _naive(job: dict) -> None:
    with Image.open(job["rgb_path"]) as im:
        full = im.convert("RGB")
    box = thermal_fov_box(full.width // 2, full.height)
    np.asarray(full.crop(box).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    thermal = np.loadtxt(job["thermal_path"], delimiter=";", skiprows=8).astype(np.float32)
    np.asarray(Image.fromarray(thermal).resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def _first_call(csv: Path, numba_cache: Path | None = None) -> float:
    """Seconds for the first read_thermal_csv in a fresh interpreter: the one-off cost each worker pays
    (best of 3). With an empty `numba_cache` folder, numba has to compile the parser: the very first run."""
    code = ("import sys, time; from data.formats import read_thermal_csv; t = time.perf_counter(); "
            "read_thermal_csv(sys.argv[1]); print(time.perf_counter() - t)")
    runs = []
    for attempt in range(3):
        env = dict(os.environ)
        if numba_cache is not None:
            env["NUMBA_CACHE_DIR"] = str(numba_cache / str(attempt))  # empty each time
        runs.append(float(subprocess.run([sys.executable, "-c", code, str(csv)], capture_output=True, text=True,
                                         check=True, env=env).stdout))
    return min(runs)


def _loader_rate(folder: Path, n: int = 512) -> float:
    import torch

    from data.dataset import PairedSkyDataset

    rng = np.random.default_rng(0)
    np.save(folder / "rgb.npy", rng.integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8))
    np.save(folder / "thermal.npy", rng.normal(-20, 10, (n, SIZE, SIZE)).astype(np.float16))
    pd.DataFrame({"row": np.arange(n), "split": "train", "is_day": True}).to_parquet(folder / "index.parquet")
    (folder / "norm_stats.json").write_text(json.dumps(
        {"rgb_mean": [0.5] * 3, "rgb_std": [0.25] * 3, "thermal_mean": -20.0, "thermal_std": 10.0}))
    loader = torch.utils.data.DataLoader(PairedSkyDataset(folder, "train", augment=True), batch_size=32,
                                         num_workers=1)
    next(iter(loader))  # worker start-up is not throughput
    t0 = time.perf_counter()
    count = sum(len(rgb) for rgb, _ in loader)
    return count / (time.perf_counter() - t0)


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = tmp / "t.csv"
        csv.write_text(format_thermal_csv(np.random.default_rng(1).uniform(-60, 30, (252, 336))))
        same = np.array_equal(read_thermal_csv(csv), np.loadtxt(csv, delimiter=";", skiprows=8).astype(np.float32))
        t_fast = _best(lambda: read_thermal_csv(csv), 50)
        t_loadtxt = _best(lambda: np.loadtxt(csv, delimiter=";", skiprows=8), 20)
        t_first = _first_call(csv)
        t_compile = _first_call(csv, numba_cache=tmp / "numba")
        jobs = _full_size_files(tmp, 4)
        t_pair = _best(lambda: [process_pair(j) for j in jobs], 3) / len(jobs)
        t_naive = _best(lambda: [_naive(j) for j in jobs], 2) / len(jobs)
        (tmp / "prep").mkdir()
        loader = _loader_rate(tmp / "prep")
    return "\n".join([
        "### Data preparation (`data.prepare`, `data.PairedSkyDataset`)",
        "",
        "`python -m benchmarks.run_all --only prepare` (best of repeated runs; one process unless stated)",
        "",
        "| what | measured | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| `read_thermal_csv`, 336×252 CSV (identical values: {same}) | {t_fast * 1e3:.2f} ms | "
        f"`np.loadtxt` {t_loadtxt * 1e3:.2f} ms | {t_loadtxt / t_fast:.1f}× |",
        f"| `read_thermal_csv` first call in a new process (numba loads its compiled parser from the cache) | "
        f"{t_first * 1e3:.0f} ms | – | – |",
        f"| `read_thermal_csv` first call with an empty numba cache (compiles the parser: the very first run) | "
        f"{t_compile:.1f} s | – | – |",
        f"| prepare, one worker, 6144×2048 JPG + 336×252 CSV → {SIZE}² | {1 / t_pair:.1f} pairs/s | "
        f"naive full decode + loadtxt {1 / t_naive:.1f} pairs/s | {t_naive / t_pair:.1f}× |",
        f"| `PairedSkyDataset` {SIZE}², augmentations on, DataLoader 1 worker, batch 32 | "
        f"{loader:.0f} samples/s | – | – |",
    ])
