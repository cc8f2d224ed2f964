"""Raw SAGE Mobotix files → paired, day/night-flagged index + memory-mappable arrays.

    python -m data.prepare --raw runs/raw --out runs/prepared --size 64
    python -m data.prepare --raw runs/raw --out runs/prepared --size 64 --rows sky,horizon

Reads layout (a) `RAW/<VSN>/{rgb,thermal}/{ts_ns}-{filename}` and/or the original workflow's layout (b)
`RAW/rgb/`, `RAW/rgb/processed/`, `RAW/thermal/` (data.prepare.pairing), pairs RGB and thermal per capture and
position, decodes each pair once (data.prepare.images; cached under OUT/cache/, so a rerun after new files arrive,
or after a kill, processes only what is missing and ends with the same outputs) and writes, all staged under
temporary names and committed together (data.prepare.outputs):
  index.parquet   one row per pair, sorted by (vsn, timestamp, position); `row` indexes the arrays;
                  `preset_row` ("sky", "horizon"; null below them) and `preset_column` (0..7) name the preset
  rgb.npy         uint8 (N, S, S, 3)      thermal.npy  float16 (N, S, S) °C, pixel-aligned with rgb.npy
  norm_stats.json channel mean/std of the train split's day rows (rgb on a 0..1 scale, thermal in °C)
  report.json     settings (rows among them) and counts: pairs, bad pairs, skipped by reason, day/night, days
                  and pairs per split, the static-obstruction masks (data.prepare.obstruction)
  skipped.csv     file, reason, detail     bad_pairs.csv  rgb_file, thermal_file, reason
                  (any file that cannot be used - out-of-range thermal values, a garbled name or timestamp,
                  an I/O error, a symlink loop - is a row here, never the end of the run; raw is read only)
  pairs/<VSN>/{ts_ns}_position{N}.txt      the original two-line pair files (RGB name, thermal name)
  runs.jsonl      one line per run: pairs decoded now vs taken from the cache, the cache's entries and bytes
  complete.json   written last: the folder is complete only when it is there and the files match it (row
                  count, array sizes, hashes of the small files); readers refuse the folder otherwise
A killed run leaves either the previous complete folder or one without complete.json (never a mix); its
temporary arrays are deleted when the next run starts. One prepare at a time per OUT (a lock, OUT/.lock):
a second one exits 2 naming the first one's PID. Free space is checked before anything is written; a disk
that fills anyway ends the run with one line (exit 2), temporaries removed. The cache is about as large as the
arrays. Entries of files that are gone or of other settings (--size, --crop) stay for later reruns unless
--prune-cache; deleting OUT/cache only costs decoding everything again.
Day/night: sun elevation at the node's registry location at each timestamp ≥ --min-elevation.
Presets: those of --rows (default `sky`: 1, 5, …, 29; `horizon`: 2, 6, …, 30), every numbered one with
--all-positions. Each run indexes exactly the rows it is given: outputs are rewritten from the cache, and the
rows are in report.json and complete.json, so a folder made with other rows is never taken for this one.
`cloud_fraction` uses each preset's own row elevations and leaves out pixels found statically obstructed.
Splits: whole local days (node time zone), assigned per node location period (data.prepare.splits), so a node
that moved has train, val and test days in each place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.folder_lock import folder_lock
from data.formats import parse_rows, preset_column, preset_row
from data.prepare.images import (
    STATS,
    cache_key,
    cache_path,
    cache_usage,
    load_cached,
    parse_crop,
    process_pair,
    save_cached,
)
from data.prepare.obstruction import exclude_obstructions
from data.prepare.outputs import (
    DISK_FULL,
    Staging,
    bytes_needed,
    check_free_space,
    remove_stale_temps,
    write_arrays,
    write_pair_files,
)
from data.prepare.pairing import Skip, filter_positions, pair_files, scan_raw
from data.prepare.splits import SPLITS, assign_splits, split_by_location  # noqa: F401  (assign_splits re-exported)
from data.sage.registry import RegistryError, load_registry, node_period, sun_elevation
from sagecast_common.cli import UserError, make_parser, run_cli
from sagecast_common.runio import JsonlLogger


def _locate(pairs, min_elevation: float, registry) -> tuple[list[dict], list[Skip]]:
    """Registry location, sun elevation and local date of each pair."""
    rows, skipped = [], []
    for p in pairs:
        try:
            period = node_period(p.vsn, p.ts_ns, registry=registry)
            elevation = sun_elevation(p.vsn, p.ts_ns // 1000 * 1000, registry=registry)  # astral takes µs
        except RegistryError as e:
            skipped += [Skip(p.rgb.rel, "unknown_node", str(e)), Skip(p.thermal.rel, "unknown_node", str(e))]
            continue
        when = pd.Timestamp(p.ts_ns, tz="UTC")
        rows.append({"vsn": p.vsn, "timestamp": when, "position": p.position, "rgb_file": p.rgb.rel,
                     "thermal_file": p.thermal.rel, "lat": period.lat, "lon": period.lon,
                     "sun_elevation": elevation, "is_day": elevation >= min_elevation,
                     "local_date": str(when.tz_convert(period.tz).date()),
                     "_pair": p})
    return rows, skipped


def _plan_decode(rows: list[dict], cache_dir: Path, *, size: int, crop) -> list[tuple[dict, dict]]:
    """(job, row) for every row missing from the cache; sets row['_cache'], or row['_fail'] for a file gone
    or unreadable since the scan."""
    todo = []
    for r in rows:
        p = r["_pair"]
        job = {"rgb_path": str(p.rgb.path), "rgb_rel": p.rgb.rel, "thermal_path": str(p.thermal.path),
               "thermal_rel": p.thermal.rel, "size": size, "crop": crop, "position": p.position}
        try:
            r["_cache"] = cache_path(cache_dir, cache_key(job))
        except OSError as e:
            r["_fail"] = Skip(p.rgb.rel, "unreadable", f"{type(e).__name__}: {e}")
            continue
        if load_cached(r["_cache"], "stats", "fail") is None:
            todo.append((job, r))
    return todo


def _decode(todo: list[tuple[dict, dict]], *, workers: int, progress: bool) -> None:
    """Fill the cache for `todo`; a file that could not be read this time gets row['_fail'] (not cached: an
    I/O error may pass)."""
    bar = tqdm(total=len(todo), desc="prepare", unit="pair", disable=not progress)
    jobs = [job for job, _ in todo]
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(todo) > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(process_pair, jobs, chunksize=4)
        else:
            results = map(process_pair, jobs)
        for (_, r), result in zip(todo, results, strict=True):
            if result.pop("transient", False):
                r["_fail"] = Skip(*map(str, result["fail"]))
            else:
                save_cached(r["_cache"], result)
            bar.update()
    bar.close()


def prepare(raw, out, *, size: int = 128, crop: str = "fov", min_elevation: float = 0.0, seed: int = 0,
            fractions=(0.7, 0.15, 0.15), rows=("sky",), all_positions: bool = False,
            keep_unpositioned: bool = False, workers: int | None = None, registry=None, progress: bool = True,
            prune_cache: bool = False) -> dict:
    """Run the whole preparation; returns the report (also written to OUT/report.json). One writer per OUT."""
    raw, out = Path(raw), Path(out)
    try:
        row_names = parse_rows(rows if isinstance(rows, str) else ",".join(rows))
    except ValueError as e:
        raise UserError(str(e)) from None
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist (or is not a folder): give the folder that "
                        f"sagecast-download or sagecast-synthetic wrote")
    load_registry(registry)  # a missing or corrupt registry is one error here, not a skip per pair
    with folder_lock(out, tool="sagecast-prepare"):
        return _prepare(raw, out, size=size, crop=crop, min_elevation=min_elevation, seed=seed, fractions=fractions,
                        row_names=row_names, all_positions=all_positions, keep_unpositioned=keep_unpositioned,
                        workers=workers, registry=registry, progress=progress, prune_cache=prune_cache)


def _prepare(raw: Path, out: Path, *, size, crop, min_elevation, seed, fractions, row_names, all_positions,
             keep_unpositioned, workers, registry, progress, prune_cache) -> dict:
    started = time.time()
    crop_spec = parse_crop(crop)
    workers = workers or min(4, os.cpu_count() or 1)
    remove_stale_temps(out)
    files, skipped = scan_raw(raw)
    pairs, bad, more = pair_files(files)
    kept, by_position = filter_positions(pairs, rows=row_names, all_positions=all_positions,
                                         keep_unpositioned=keep_unpositioned)
    rows, unlocated = _locate(kept, min_elevation, registry)
    skipped += more + by_position + unlocated
    todo = _plan_decode(rows, out / "cache", size=size, crop=crop_spec)
    check_free_space(out, bytes_needed(len(rows), len(todo), size))
    try:
        _decode(todo, workers=workers, progress=progress)
    except OSError as e:
        _raise_if_disk_full(e, out)
        raise
    run = {"decoded": len(todo), "cached": len(rows) - len(todo)}
    good = []
    for r in rows:
        if "_fail" in r:
            skipped.append(r["_fail"])
            continue
        entry = load_cached(r["_cache"], "stats", "fail")
        if "fail" in entry:
            skipped.append(Skip(*map(str, entry["fail"])))
        else:
            good.append({**r, **dict(zip(STATS, entry["stats"].tolist(), strict=True))})
    columns = ["vsn", "timestamp", "position", "preset_row", "preset_column", "rgb_file", "thermal_file", "lat",
               "lon", "sun_elevation", "is_day", "local_date", "split", "row", *STATS]
    index = pd.DataFrame(good, columns=[*columns, "_cache"])
    index = index.sort_values(["vsn", "timestamp", "position"], kind="stable").reset_index(drop=True)
    index["timestamp"] = pd.to_datetime(index["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    index["split"] = split_by_location(index, fractions, seed)
    index["row"] = np.arange(len(index))
    index = index.astype({"position": np.int64, "is_day": bool, "sun_elevation": np.float64})
    index["preset_row"] = pd.Series([preset_row(p) if p > 0 else None for p in index["position"]], dtype=object)
    index["preset_column"] = np.array([preset_column(p) if p > 0 else -1 for p in index["position"]], np.int64)
    index["cloud_fraction"], obstructions = exclude_obstructions(index)
    reasons = Counter(s.reason for s in skipped)
    report = {"raw": str(raw.resolve()), "size": size, "crop": crop, "min_elevation": min_elevation, "seed": seed,
              "fractions": list(fractions), "rows": list(row_names), "all_positions": all_positions,
              "keep_unpositioned": keep_unpositioned, "obstruction_masks": obstructions,
              "files": {"rgb": sum(f.name.kind == "rgb" for f in files),
                        "thermal": sum(f.name.kind == "thermal" for f in files)},
              "pairs": len(index), "bad_pairs": len(bad), "skipped_files": len(skipped),
              "skipped_by_reason": dict(sorted(reasons.items())),
              "day_pairs": int(index.is_day.sum()), "night_pairs": int((~index.is_day).sum()),
              "splits": {s: {"days": sorted(index.local_date[index.split == s].unique().tolist()),
                             "pairs": int((index.split == s).sum()),
                             "day_pairs": int((index.is_day & (index.split == s)).sum())} for s in SPLITS}}
    staging = Staging(out)
    try:
        skip_df = pd.DataFrame([vars(s) for s in skipped], columns=["file", "reason", "detail"])
        staging.write_text("skipped.csv", skip_df.sort_values(["file", "reason"]).to_csv(index=False))
        bad_df = pd.DataFrame([(b.rgb.rel, b.thermal.rel, b.reason) for b in bad],
                              columns=["rgb_file", "thermal_file", "reason"])
        staging.write_text("bad_pairs.csv", bad_df.to_csv(index=False))
        if not index.empty:
            staging.write_text("norm_stats.json", _json(write_arrays(staging, index, size)))
            write_pair_files(staging, index)
            index[columns].to_parquet(staging.path("index.parquet"), index=False)
        staging.write_text("report.json", _json(report))
        # the only window in which a kill leaves a refused folder
        staging.commit(complete=not index.empty, settings={"rows": list(row_names), "all_positions": all_positions})
    except OSError as e:
        staging.discard()
        _raise_if_disk_full(e, out)
        raise
    except BaseException:
        staging.discard()
        raise
    if index.empty:
        raise SystemExit(f"no usable pairs under {raw}: see {out / 'skipped.csv'} and {out / 'report.json'}")
    cache = cache_usage(out / "cache", keep={Path(r["_cache"]).name for r in rows} if prune_cache else None)
    JsonlLogger(out / "runs.jsonl").log({**run, **cache, "pairs": len(index),
                                         "seconds": round(time.time() - started, 2),
                                         "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return report


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def _raise_if_disk_full(e: OSError, out: Path) -> None:
    if e.errno in DISK_FULL:
        raise UserError(f"disk full while writing {out} ({e.strerror}); temporaries removed, the previous "
                        f"outputs are untouched: free space and rerun (decoded pairs are reused)") from None


def _fractions(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"need three non-negative numbers like 0.7,0.15,0.15; got {text!r}")
    return values


def main(argv=None) -> None:
    ap = make_parser("sagecast-prepare", __doc__)
    ap.add_argument("--raw", required=True, help="raw folder (layout a and/or b, see above)")
    ap.add_argument("--out", required=True, help="prepared folder to write (created; reruns are incremental)")
    ap.add_argument("--size", type=int, default=128, help="output side S in pixels (e.g. 64 quick, 224 full)")
    ap.add_argument("--crop", default="fov",
                    help="RGB crop inside the optical (left) half: 'fov' = the thermal field of view, "
                         "a centred (H/1.1) x (H/1.1*4/3) box as in the original workflow, pixel-aligned with "
                         "the thermal frame; or 'left,top,right,bottom' as fractions of the half (all <= 1) or "
                         "as its pixels, e.g. 685,215,2627,1808 for a 3072x2048 half. A custom crop is no "
                         "longer aligned pixel for pixel with the thermal frame.")
    ap.add_argument("--min-elevation", type=float, default=0.0,
                    help="sun elevation (deg) from which a frame counts as day: 0 horizon, -6 civil twilight")
    ap.add_argument("--seed", type=int, default=0, help="seed of the day-to-split assignment")
    ap.add_argument("--fractions", type=_fractions, default=(0.7, 0.15, 0.15), help="train,val,test share of days")
    ap.add_argument("--rows", default="sky", help="preset rows to index, comma list of sky, horizon")
    ap.add_argument("--all-positions", action="store_true", help="keep every numbered preset, whatever its row")
    ap.add_argument("--keep-unpositioned", action="store_true",
                    help="keep files whose names carry no position (before ~2023-03-14); indexed as position -1")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default min(4, CPUs))")
    ap.add_argument("--registry", default=None,
                    help="node registry JSON (default $SAGECAST_NODES or data/sage/nodes.json)")
    ap.add_argument("--prune-cache", action="store_true",
                    help="after writing, delete cache entries this run did not use (files gone, other --size or "
                         "--crop) and leftovers of killed runs")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.size < 8:
        ap.error(f"--size must be >= 8, got {args.size}")
    try:
        parse_crop(args.crop)
        rows = parse_rows(args.rows)
    except ValueError as e:
        ap.error(str(e))
    def run() -> None:
        report = prepare(args.raw, args.out, size=args.size, crop=args.crop, min_elevation=args.min_elevation,
                         seed=args.seed, fractions=args.fractions, rows=rows, all_positions=args.all_positions,
                         keep_unpositioned=args.keep_unpositioned, workers=args.workers, registry=args.registry,
                         progress=not args.no_progress, prune_cache=args.prune_cache)
        days = ", ".join(f"{s} {len(v['days'])} days/{v['pairs']} pairs" for s, v in report["splits"].items())
        print(f"{report['pairs']} pairs ({report['day_pairs']} day, {report['night_pairs']} night; {days}), "
              f"{report['bad_pairs']} bad pairs, skipped {report['skipped_by_reason']} -> {args.out}")

    run_cli(run, prog=ap.prog)

if __name__ == "__main__":
    main()
