"""The arrays, statistics and pair files `python -m data.prepare` writes (see data.prepare.run for the layout).

Everything is written under a temporary name and renamed into place; `remove_stale_temps` deletes what a
killed run left behind (the `.rgb.npy.*.tmp` arrays are as large as the dataset) before a run starts.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from data.prepare.images import load_cached
from sagecast_common.runio import atomic_path


def remove_stale_temps(out: Path) -> int:
    """Delete atomic-write leftovers (`.NAME.*.tmp`) in OUT and its cache, and a half-built pairs folder."""
    stale = [*out.glob(".*.tmp"), *out.glob("cache/*/.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / ".pairs.new", ignore_errors=True)
    return len(stale)


def norm_stats(rgb: np.ndarray, thermal: np.ndarray, rows: np.ndarray, selection: str) -> dict:
    """Channel mean/std of `rows`; refuses to return a non-finite number (it would stop training at step 0)."""
    with np.errstate(invalid="ignore", over="ignore"):  # checked below, with the cause named
        return _finite_stats(rgb, thermal, rows, selection)


def _finite_stats(rgb: np.ndarray, thermal: np.ndarray, rows: np.ndarray, selection: str) -> dict:
    s, ss, ts, tss = np.zeros(3), np.zeros(3), 0.0, 0.0
    for lo in range(0, len(rows), 256):
        chunk = rows[lo:lo + 256]
        x = rgb[chunk].astype(np.float64) / 255.0
        s, ss = s + x.sum(axis=(0, 1, 2)), ss + (x * x).sum(axis=(0, 1, 2))
        t = thermal[chunk].astype(np.float64)
        ts, tss = ts + t.sum(), tss + (t * t).sum()
    n = max(len(rows), 1) * rgb.shape[1] * rgb.shape[2]
    mean, tmean = s / n, ts / n
    stats = {"rgb_mean": mean.tolist(), "rgb_std": np.sqrt(np.maximum(ss / n - mean**2, 1e-12)).tolist(),
             "thermal_mean": float(tmean), "thermal_std": float(np.sqrt(max(tss / n - tmean**2, 1e-12))),
             "rows": int(len(rows)), "selection": selection}
    bad = [k for k, v in stats.items() if k.startswith(("rgb", "thermal"))
           and not all(math.isfinite(x) for x in np.atleast_1d(v))]
    if bad:
        worst = [int(r) for r in rows if not np.isfinite(thermal[r]).all()][:5]
        raise SystemExit(f"norm_stats would hold non-finite {', '.join(bad)} ({selection}); thermal.npy rows "
                         f"with non-finite values: {worst or 'none'}. Delete OUT/cache and rerun.")
    return stats


def write_arrays(out: Path, index: pd.DataFrame, size: int) -> dict:
    """rgb.npy / thermal.npy from the cache, in index order, and norm_stats from them."""
    n = len(index)
    with atomic_path(out / "rgb.npy") as rgb_tmp, atomic_path(out / "thermal.npy") as th_tmp:
        rgb = np.lib.format.open_memmap(rgb_tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        thermal = np.lib.format.open_memmap(th_tmp, mode="w+", dtype=np.float16, shape=(n, size, size))
        for i, path in enumerate(index["_cache"]):
            entry = load_cached(path, "rgb", "thermal")
            rgb[i], thermal[i] = entry["rgb"], entry["thermal"]
        for selection, mask in (("train split, day rows", (index.split == "train") & index.is_day),
                                ("train split, all rows (no day rows)", index.split == "train"),
                                ("all rows (no train rows)", index.split.notna())):
            if mask.any() or selection.startswith("all"):
                stats = norm_stats(rgb, thermal, np.flatnonzero(mask.to_numpy()), selection)
                break
        rgb.flush(), thermal.flush()
        del rgb, thermal
    return stats


def write_pair_files(out: Path, index: pd.DataFrame) -> None:
    staging = out / ".pairs.new"
    shutil.rmtree(staging, ignore_errors=True)
    for r in index.itertuples():
        folder = staging / r.vsn
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{r.timestamp.value}_position{r.position}.txt").write_text(
            f"{Path(r.rgb_file).name}\n{Path(r.thermal_file).name}\n")
    staging.mkdir(exist_ok=True)
    old = out / ".pairs.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / "pairs").exists():
        os.replace(out / "pairs", old)
    os.replace(staging, out / "pairs")
    shutil.rmtree(old, ignore_errors=True)
