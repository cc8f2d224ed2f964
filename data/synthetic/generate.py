"""Synthetic SAGE sky in the download's exact layout: `python -m data.synthetic --out runs/raw --nodes W056
--start 2023-05-18 --days 4 --interval-min 5 --seed 0 --size small` (see --help).

Per node it writes `<VSN>/rgb/{ts_ns}-{W}x{H}_position{N}.jpg` (left half optical, right half false-colour
thermal preview), `<VSN>/thermal/{ts_ns}-right_{w}x{h}_14bit.thermal.celsius_position{N}.csv`,
`<VSN>/sage_meta/<UTC date>.csv` (the upload records as sage-data-client returns them, one per file),
`<VSN>/truth.parquet` (per capture: regime, layers, true cloud fraction, oracles; columns in
data.synthetic.oracle) and `<VSN>/faults.csv` (faults injected). Weather: data.synthetic.weather (a regime per
local day; `--regime`, `--cloud-cover`, `--wind-speed`, `--evolution off` pin it); physics: render and field;
camera: camera. `python -m data.synthetic.stats RAW` summarises a run's weather and forecastability.

Timing follows the scan plugin: one loop every --interval-min; within it the presets of `--rows` (default
`sky`; `sky,horizon` adds the horizon row, presets 2, 6, …, 30, after the sky row) in scan order, ~3 s apart,
each its own ts_ns shared by its RGB and thermal file. Horizon frames show the node's trees and roofs at the
bottom (data.synthetic.render); truth counts only the sky they leave visible.
Days are whole local days: each runs from local midnight to the next local midnight, in the time zone the
registry gives the node at 12:00 UTC of that date. Across a move (W056, 2023-05-20T00:00Z, Chicago → San
Diego) a day is therefore 22–26 h long, with no gap or overlap.

Same arguments and seed give byte-identical files, with any --workers. A node folder is rebuilt from scratch
on rerun (only if it carries this generator's `.synthetic.json`); `complete: true` there marks a finished node.
OUT/.complete (the summary, written atomically after the last node; removed first on a rerun) marks a finished
raw folder: the pipeline's completion record of this step (sagecast_pipeline.steps). --truth-only writes none.

--daylight-only (for experiments: night frames carry no optical signal and cost as much as day ones) keeps only
the scan loops whose every capture has the sun at or above the horizon at the node; each kept capture is
byte-identical to a full run's, loop numbers included. Days stay whole local days in the bookkeeping
(`local_dates`, `start_ns`, `end_ns`); truth, upload records and counts hold the daylight captures only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from astral import Observer
from astral.sun import azimuth as astral_azimuth
from tqdm import tqdm

from data.formats import parse_rows, rgb_name, row_presets, thermal_name, thermal_plot_name
from data.sage.registry import node_location, node_period, sun_elevation
from data.synthetic.camera import JITTER_DEG, expose, false_colour, jpeg, noise_pool, pointing_jitter
from data.synthetic.layout import (
    FAULTS,
    PLUGIN_TAG,
    day_spans,
    draw_fault,
    fast_thermal_csv,
    node_key,
    node_meta,
    prepare_node_dir,
    write_tables,
)
from data.synthetic.oracle import TRUTH_COLUMNS, LoopSight, capture_truth, cloud_motion
from data.synthetic.render import Sky, preset_view, render
from data.synthetic.weather import REGIMES, Weather
from sagecast_common.cli import make_parser
from sagecast_common.runio import atomic_write_json

# combined W, H; thermal w, h. The optical half stays 3:2 and the thermal 4:3 as the camera's; tiny is for
# 32-px experiments: its field-of-view crop (77×58 px) is still larger than a 32×32 preparation.
SIZES = {"tiny": (192, 64, 48, 36), "small": (768, 256, 112, 84), "full": (6144, 2048, 336, 252)}
PRESET_STEP_S = 3.0
LOOP_START_S = (0.2, 1.5)  # a loop starts this late after its nominal time
PRESET_LAG_S = 0.3  # and each preset up to this much after its ~3 s step
LOOPS_PER_TASK = 12
EPOCH_S = 1_577_836_800  # 2020-01-01T00:00Z: times are seconds since this


@lru_cache(maxsize=2)
def _sky(vsn: str, seed: int, start: str, days: int, regime: str, cloud_cover, wind_speed, evolution: bool) -> Sky:
    """The node's weather over the run's local days, padded by a day each side for the midnight blends."""
    spans = day_spans(vsn, dt.date.fromisoformat(start) - dt.timedelta(days=1), days + 2)
    key = node_key(vsn)
    weather = Weather(days=[(d.toordinal(), a / 1e9 - EPOCH_S, b / 1e9 - EPOCH_S) for d, a, b in spans],
                      places=[node_location(vsn, pd.Timestamp(d).tz_localize("UTC") + pd.Timedelta(hours=12))
                              for d, _, _ in spans],
                      seed=seed, key=key, regime=regime, cloud_cover=cloud_cover, wind_speed=wind_speed,
                      evolution=evolution)
    return Sky(weather, seed, key)


def _render_task(task: dict) -> tuple[list, list, list]:
    """Render and write the captures of a few loops. Returns (upload records, truth rows, fault rows)."""
    vsn, seed, node_dir = task["vsn"], task["seed"], Path(task["out"]) / task["vsn"]
    width, height, tw, th = SIZES[task["size"]]
    half = (height, width // 2, 3)
    sky = _sky(vsn, seed, task["start"], task["days"], task["regime"], task["cloud_cover"], task["wind_speed"],
               task["evolution"])
    key, meta = node_key(vsn), node_meta(vsn)
    url_base = f"https://storage.sagecontinuum.org/api/v1/data/{meta['job']}/sage-{meta['task']}-{PLUGIN_TAG}/{meta['node']}"
    noise = noise_pool(seed, math.prod(half))
    records, truth, faults = [], [], []
    for loop_num, nominal_ns in task["loops"]:
        nominal_s = nominal_ns // 10**9
        jitter = np.random.default_rng([seed, key, nominal_s, 0])
        loop_ns = nominal_ns + int(jitter.uniform(*LOOP_START_S) * 1e9)
        motion = cloud_motion(sky, loop_ns / 1e9 - EPOCH_S, nominal_s)  # one estimate per scan loop
        views = {pos: preset_view(pos, width // 2, height, tw, th, key) for pos in row_presets(task["rows"])}
        sight = LoopSight(sky, key, loop_ns / 1e9 - EPOCH_S, views)  # one visibility pass for the whole loop
        for i, pos in enumerate(views):
            ts_ns = loop_ns + int((i * PRESET_STEP_S + jitter.uniform(0.0, PRESET_LAG_S)) * 1e9)
            ts = pd.Timestamp(ts_ns // 1000 * 1000, tz="UTC")  # astral takes datetimes: microseconds
            t_s = ts_ns / 1e9 - EPOCH_S
            period = node_period(vsn, ts)
            sun_el = sun_elevation(vsn, ts)
            sun_az = float(astral_azimuth(Observer(period.lat, period.lon, period.elevation_m), ts.to_pydatetime()))
            rng = np.random.default_rng([seed, key, nominal_s, pos])
            view = views[pos]
            aim = pointing_jitter(rng, task["jitter_deg"])
            row = {"vsn": vsn, "ts_ns": ts_ns, "position": pos, "loop_num": loop_num, "sun_elevation": sun_el,
                   "sun_azimuth": sun_az, "is_day": sun_el >= 0.0,
                   **capture_truth(sky, view, t_s, seen=sight.seen[pos], jitter=aim), **motion}
            truth.append(tuple(row[c] for c in TRUTH_COLUMNS))
            if task["truth_only"]:
                continue
            celsius, colours = render(sky, view, t_s, tw, th, sun_el=sun_el, sun_az=sun_az, jitter=aim, rng=rng)
            start = int(rng.integers(0, noise.size - math.prod(half)))
            left = expose(colours, width // 2, height, noise[start:start + math.prod(half)].reshape(half))
            jpg = jpeg(np.concatenate([left, false_colour(celsius, width // 2, height)], axis=1))
            csv = fast_thermal_csv(celsius)

            fault, thermal_pos = draw_fault(seed, key, nominal_s, pos, task["fault_rate"])
            rgb_file, thermal_file = rgb_name(width, height, pos), thermal_name(thermal_pos, width=tw, height=th)
            files = [("rgb", rgb_file, jpg[: len(jpg) // 3] if fault == "corrupt_jpg" else jpg, pos)]
            if fault == "truncated_csv":
                csv = csv[: len(csv) * 3 // 5]
            if fault != "missing_thermal":
                files.append(("thermal", thermal_file, csv.encode(), thermal_pos))
            if fault == "plot_jpg":  # the plugin's matplotlib figure; it ends in .jpg too
                files.append(("thermal", thermal_plot_name(pos, width=tw, height=th),
                              jpeg(false_colour(celsius, tw * 2, th * 2)), pos))
            for kind, name, data, file_pos in files:
                (node_dir / kind / f"{ts_ns}-{name}").write_bytes(data)
                records.append((ts_ns, f"{url_base}/{ts_ns}-{name}", name, str(file_pos), str(loop_num)))
            if fault:
                fault_file = {"corrupt_jpg": rgb_file, "plot_jpg": files[-1][1]}.get(fault, thermal_file)
                faults.append((ts_ns, pos, fault, f"{ts_ns}-{fault_file}"))
    return records, truth, faults


def _daylight(vsn: str, nominal_ns: int, presets: int) -> bool:
    """Sun at or above the horizon at the loop's first and last possible capture time. Within one loop (under a
    minute) the elevation is monotonic unless the sun is near its highest (far above the horizon then), so
    every capture between is lit too."""
    last_s = LOOP_START_S[1] + (presets - 1) * PRESET_STEP_S + PRESET_LAG_S
    return all(sun_elevation(vsn, pd.Timestamp(nominal_ns + int(s * 1e9), tz="UTC")) >= 0.0
               for s in (LOOP_START_S[0], last_s))


def _check(size, cloud_cover, wind_speed, fault_rate, days, interval_min, regime, jitter_deg) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if regime != "mixed" and regime not in REGIMES:
        raise ValueError(f"regime must be 'mixed' or one of {', '.join(REGIMES)}, got {regime!r}")
    if (cloud_cover is not None and not 0.0 <= cloud_cover <= 1.0) or not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"cloud_cover and fault_rate must be in [0, 1], got {cloud_cover}, {fault_rate}")
    if days < 1 or interval_min <= 0 or (wind_speed is not None and wind_speed < 0) or jitter_deg < 0:
        raise ValueError(f"need days >= 1, interval_min > 0, wind_speed >= 0, jitter_deg >= 0 "
                         f"(got {days}, {interval_min}, {wind_speed}, {jitter_deg})")


def generate(out, *, nodes=("W056",), start="2023-05-18", days: int = 1, interval_min: float = 5.0, seed: int = 0,
             size: str = "small", regime: str = "mixed", cloud_cover: float | None = None,
             wind_speed: float | None = None, evolution: bool = True, jitter_deg: float = JITTER_DEG,
             fault_rate: float = 0.01, hours: float | None = None, truth_only: bool = False,
             daylight_only: bool = False, workers: int = 1, rows=("sky",), progress: bool = True) -> dict:
    """Write the synthetic raw layout under `out`; returns a summary (captures, files, faults per node).

    `cloud_cover` / `wind_speed` (None = the regime's draw) pin every day's low-layer cover (and drop cirrus) /
    every layer's wind speed; `evolution=False` freezes cloud shapes, cover and wind within each day;
    `truth_only` writes truth.parquet (identical to a full run's) and no pictures: for weather statistics;
    `daylight_only` keeps only the loops with the sun up (module doc);
    `rows`: the preset rows scanned (data.formats.ROW_TILTS names; the sky row's files do not depend on it)."""
    _check(size, cloud_cover, wind_speed, fault_rate, days, interval_min, regime, jitter_deg)
    rows = parse_rows(rows if isinstance(rows, str) else ",".join(rows))
    presets = row_presets(rows)
    start_date = dt.date.fromisoformat(str(start))
    step_ns = int(round(interval_min * 60e9))
    out = Path(out)
    (out / ".complete").unlink(missing_ok=True)  # from here until the end, the folder is not a finished run
    summary = {"out": str(out), "captures": 0, "files": 0, "faults": dict.fromkeys(FAULTS, 0), "nodes": {}}
    for vsn in [n.upper() for n in nodes]:
        spans = day_spans(vsn, start_date, days)
        t0, t1 = spans[0][1], spans[-1][2]
        if hours is not None:
            t1 = min(t1, t0 + int(hours * 3600e9))
        loops = [(k + 1, t0 + k * step_ns) for k in range(math.ceil((t1 - t0) / step_ns))]
        if daylight_only:
            loops = [loop for loop in loops if _daylight(vsn, loop[1], len(presets))]
        run = {"vsn": vsn, "seed": seed, "size": size, "regime": regime, "cloud_cover": cloud_cover,
               "wind_speed": wind_speed, "evolution": evolution, "jitter_deg": jitter_deg, "fault_rate": fault_rate,
               "start": str(start_date), "days": days, "hours": hours, "interval_min": interval_min,
               "truth_only": truth_only, "daylight_only": daylight_only, "rows": list(rows)}
        prepare_node_dir(out / vsn, run)
        tasks = [{**run, "out": str(out), "loops": loops[i:i + LOOPS_PER_TASK]}
                 for i in range(0, len(loops), LOOPS_PER_TASK)]
        records, truth, faults = [], [], []
        bar = tqdm(total=len(loops) * len(presets), unit="capture", desc=vsn, disable=not progress)
        with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _InProcess() as pool:
            for task, (rec, tru, flt) in zip(tasks, pool.imap(_render_task, tasks), strict=True):
                records += rec
                truth += tru
                faults += flt
                bar.update(len(task["loops"]) * len(presets))
        bar.close()
        write_tables(out / vsn, vsn, records, truth, faults)
        counts = Counter(f[2] for f in faults)
        summary["nodes"][vsn] = {"captures": len(truth), "files": len(records), "faults": dict(sorted(counts.items())),
                                 "local_dates": [str(d) for d, _, _ in spans], "start_ns": t0, "end_ns": t1}
        summary["captures"] += len(truth)
        summary["files"] += len(records)
        for k, n in counts.items():
            summary["faults"][k] += n
        atomic_write_json(out / vsn / ".synthetic.json", {**run, "complete": True, "summary": summary["nodes"][vsn]})
    if not truth_only:
        atomic_write_json(out / ".complete", summary)
    return summary


class _InProcess:
    """Pool stand-in for --workers 1: same task order, no processes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items):
        return map(fn, items)


def main(argv: list[str] | None = None) -> dict:
    ap = make_parser("sagecast-synthetic", __doc__)
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per node)")
    ap.add_argument("--nodes", nargs="+", default=["W056"], help="node VSNs, e.g. W056 (must be in the registry)")
    ap.add_argument("--start", default="2023-05-18", help="first local date at the node, YYYY-MM-DD")
    ap.add_argument("--days", type=int, default=4, help="number of whole local days")
    ap.add_argument("--interval-min", type=float, default=5.0, help="minutes between scan loops")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weather, faults and noise")
    ap.add_argument("--size", choices=sorted(SIZES), default="small",
                    help="tiny: JPG 192x64, thermal 48x36 (for --size 32 preparations); small: 768x256, "
                         "112x84; full: 6144x2048, 336x252 (the camera's)")
    ap.add_argument("--regime", choices=["mixed", *REGIMES], default="mixed",
                    help="weather of every day; mixed = a regime per day drawn from the seed")
    ap.add_argument("--cloud-cover", type=float, default=None,
                    help="pin every day's mean cover 0..1 (one layer; it still wanders within the day)")
    ap.add_argument("--wind-speed", type=float, default=None, help="pin every layer's wind speed, m/s")
    ap.add_argument("--evolution", choices=["on", "off"], default="on",
                    help="off: clouds keep their shape, cover and wind stay at the day's value (pure advection)")
    ap.add_argument("--jitter-deg", type=float, default=JITTER_DEG, help="pointing jitter per capture (σ, degrees)")
    ap.add_argument("--fault-rate", type=float, default=0.01, help="fraction of captures given a fault (0 = none)")
    ap.add_argument("--hours", type=float, default=None, help="stop after this many hours (quick looks)")
    ap.add_argument("--truth-only", action="store_true", help="write truth.parquet only (for data.synthetic.stats)")
    ap.add_argument("--daylight-only", action="store_true",
                    help="only scan loops with the sun up at the node (experiments; days stay whole local days)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (1 = in-process)")
    ap.add_argument("--rows", default="sky", help="preset rows to scan, comma list of sky, horizon (scan order)")
    args = ap.parse_args(argv)
    try:
        rows = parse_rows(args.rows)
        summary = generate(args.out, nodes=args.nodes, start=args.start, days=args.days, interval_min=args.interval_min,
                           seed=args.seed, size=args.size, regime=args.regime, cloud_cover=args.cloud_cover,
                           wind_speed=args.wind_speed, evolution=args.evolution == "on", jitter_deg=args.jitter_deg,
                           fault_rate=args.fault_rate, hours=args.hours, truth_only=args.truth_only,
                           daylight_only=args.daylight_only, workers=args.workers, rows=rows)
    except (ValueError, LookupError, FileExistsError) as e:
        ap.error(str(e))
    print(json.dumps({k: summary[k] for k in ("out", "captures", "files", "faults")}))
    return summary


def cli() -> None:
    """Console script `sagecast-synthetic` (its exit status must not be the summary dict)."""
    main()


if __name__ == "__main__":
    main()
