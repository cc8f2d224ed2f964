"""The outputs `python -m data.prepare` writes (see data.prepare.run for the layout), and their completion record.

A prepared folder is complete only when `complete.json` says so. Every output is first written under a
temporary name (`Staging`); then the commit removes the old record, renames the outputs into place and
writes the new record last, atomically, naming what it covers: the row count, the sizes of rgb.npy and
thermal.npy, the sizes and SHA-256 of the small files, the number and digest of the pair files. A kill
before the commit leaves the old complete folder; a kill during it leaves a folder without a record, which
`require_complete`, the one check every reader makes (PairedSkyDataset among them), refuses with the command
that repairs it. `remove_stale_temps` deletes what a killed run left behind (the `.rgb.npy.*.tmp`
arrays are as large as the dataset) before a run starts.

    from data.prepare.outputs import require_complete
    record = require_complete("runs/prepared")     # UserError (one line, exit 2) unless complete and intact
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from data.prepare.images import load_cached
from sagecast_common.cli import UserError
from sagecast_common.runio import atomic_write_json, file_sha256

COMPLETE = "complete.json"
ARRAYS = ("rgb.npy", "thermal.npy")  # recorded by size: hashing gigabytes at every open would cost minutes
SMALL = ("index.parquet", "norm_stats.json", "report.json", "skipped.csv", "bad_pairs.csv")  # size and SHA-256
REQUIRED = (*ARRAYS, "index.parquet", "norm_stats.json")
RECORD_FORMAT = 1
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def remove_stale_temps(out: Path) -> int:
    """Delete atomic-write leftovers (`.NAME.*.tmp`) in OUT and its cache, and half-swapped pairs folders."""
    stale = [*out.glob(".*.tmp"), *out.glob("cache/*/.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    for folder in (".pairs.new", ".pairs.old"):
        shutil.rmtree(out / folder, ignore_errors=True)
    return len(stale)


def bytes_needed(rows: int, new_entries: int, size: int) -> int:
    """Disk space a run writes: both arrays in full (the old ones stay until the commit), a cache entry per
    newly decoded pair (about one array row each), and a generous allowance for the index and lists."""
    row = size * size * (3 + 2)  # uint8 RGB + float16 thermal
    return rows * (row + 1024) + new_entries * (row + 1024) + (1 << 20)


def check_free_space(out: Path, need: int) -> None:
    """UserError before anything is written when the file system holding `out` has less than `need` free."""
    where = out
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise UserError(f"not enough disk space for {out}: this run writes about {need / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB are free; free space (or --prune-cache later) and rerun")


class Staging:
    """Outputs written under temporary names in OUT, then committed together (see the module docstring)."""

    def __init__(self, out: Path):
        self.out, self.files = out, {}
        self.pairs = out / ".pairs.new"

    def path(self, name: str) -> Path:
        tmp = self.out / f".{name}.{secrets.token_hex(4)}.tmp"  # remove_stale_temps' pattern
        tmp.open("xb").close()  # created with the umask's mode, like any other output
        self.files[name] = tmp
        return tmp

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text)

    def discard(self) -> None:
        for tmp in self.files.values():
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.pairs, ignore_errors=True)

    def commit(self, *, complete: bool = True, settings: dict | None = None) -> None:
        """Old record out, outputs in, new record last (stating `settings`); without `complete`, the folder is
        left unrecorded."""
        invalidate(self.out)
        for name, tmp in self.files.items():
            os.replace(tmp, self.out / name)
        if self.pairs.exists():
            old = self.out / ".pairs.old"
            if (self.out / "pairs").exists():
                os.replace(self.out / "pairs", old)
            os.replace(self.pairs, self.out / "pairs")
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.out)
        if complete:
            write_complete(self.out, settings)


def invalidate(out: Path) -> None:
    """Remove the completion record, durably, before any recorded file changes."""
    (out / COMPLETE).unlink(missing_ok=True)
    _fsync_dir(out)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pairs_digest(out: Path) -> dict:
    files = sorted((out / "pairs").rglob("*.txt"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(out).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return {"files": len(files), "sha256": h.hexdigest()}


def write_complete(out, settings: dict | None = None) -> dict:
    """Write OUT/complete.json describing the outputs now in OUT and the `settings` that made them, e.g. the
    preset rows (prepare's last step; tests that build a prepared folder by hand call it too)."""
    out = Path(out)
    rows = int(np.load(out / "rgb.npy", mmap_mode="r").shape[0])
    files = {name: {"bytes": (out / name).stat().st_size} for name in ARRAYS}
    files |= {name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
              for name in SMALL if (out / name).exists()}
    record = {"format": RECORD_FORMAT, "rows": rows, "files": files}
    if settings:
        record["settings"] = settings
    if (out / "pairs").is_dir():
        record["pairs"] = _pairs_digest(out)
    atomic_write_json(out / COMPLETE, record)
    return record


def repair_command(prepared: Path) -> str:
    """The command that makes `prepared` complete again (with its --raw when report.json names it)."""
    try:
        raw = json.loads((prepared / "report.json").read_text())["raw"]
    except (OSError, ValueError, KeyError, TypeError):
        raw = "RAW"
    return f"sagecast-prepare --raw {raw} --out {prepared}"


def require_complete(prepared) -> dict:
    """The completion record of a prepared folder whose files still match it; else a one-line UserError
    naming the command that repairs it. Cheap: sizes for the arrays, hashes for the small files only."""
    prepared = Path(prepared)
    fix = f"rerun `{repair_command(prepared)}` (incremental: decoded pairs are reused)"
    if not (prepared / COMPLETE).exists():
        if not (prepared / "index.parquet").exists():
            raise UserError(f"{prepared} holds no prepared data: make it with `{repair_command(prepared)}`")
        raise UserError(f"{prepared} has no completion record ({COMPLETE}): an interrupted prepare, or one made "
                        f"before records existed; {fix}")
    try:
        record = json.loads((prepared / COMPLETE).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{prepared / COMPLETE} is unreadable ({type(e).__name__}); {fix}") from None
    for name in REQUIRED:
        if name not in files:
            raise UserError(f"{prepared / COMPLETE} does not cover {name}; {fix}")
    for name, want in files.items():
        path = prepared / name
        try:
            got = path.stat().st_size
        except OSError as e:
            raise UserError(f"{path} is missing or unreadable ({e.strerror}); {fix}") from None
        if got != want.get("bytes") or ("sha256" in want and file_sha256(path) != want["sha256"]):
            raise UserError(f"{path} does not match the completion record ({got} bytes, recorded "
                            f"{want.get('bytes')}{', other content' if got == want.get('bytes') else ''}): "
                            f"changed or damaged after prepare finished; {fix}")
    if "pairs" in record:
        found = sum(len(names) for _, _, names in os.walk(prepared / "pairs"))
        if found != record["pairs"]["files"]:
            raise UserError(f"{prepared / 'pairs'} holds {found} pair files, the completion record "
                            f"{record['pairs']['files']}; {fix}")
    return record


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


def _memmap(path: Path, dtype, shape) -> np.memmap:
    """A new .npy memmap whose blocks are allocated now: disk full is then an ENOSPC here, not a SIGBUS
    (uncatchable) at the page that first touches a block the file system cannot provide."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise
            # EINVAL/EOPNOTSUPP: this file system cannot reserve; writes go on as before
    return array


def write_arrays(staging: Staging, index: pd.DataFrame, size: int) -> dict:
    """rgb.npy / thermal.npy from the cache, in index order, staged; returns norm_stats from them."""
    n = len(index)
    rgb = _memmap(staging.path("rgb.npy"), np.uint8, (n, size, size, 3))
    thermal = _memmap(staging.path("thermal.npy"), np.float16, (n, size, size))
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
    return stats


def write_pair_files(staging: Staging, index: pd.DataFrame) -> None:
    """pairs/<VSN>/{ts_ns}_position{N}.txt, staged: two lines, the RGB and the thermal file name."""
    shutil.rmtree(staging.pairs, ignore_errors=True)
    staging.pairs.mkdir()
    for r in index.itertuples():
        folder = staging.pairs / r.vsn
        folder.mkdir(exist_ok=True)
        (folder / f"{r.timestamp.value}_position{r.position}.txt").write_text(
            f"{Path(r.rgb_file).name}\n{Path(r.thermal_file).name}\n")
