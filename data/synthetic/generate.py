"""Synthetic SAGE sky in the download's exact layout: `python -m data.synthetic --out runs/raw --nodes W056
--start 2023-05-18 --days 4 --interval-min 5 --seed 0 --size small` (see --help; physics in synthetic_render).

Per node it writes `<VSN>/rgb/{ts_ns}-{W}x{H}_position{N}.jpg` (left half optical, right half false-colour
thermal preview), `<VSN>/thermal/{ts_ns}-right_{w}x{h}_14bit.thermal.celsius_position{N}.csv`,
`<VSN>/sage_meta/<UTC date>.csv` (the upload records as sage-data-client returns them, one per file),
`<VSN>/truth.parquet` (per capture: true cloud fraction, wind, sun) and `<VSN>/faults.csv` (faults injected).

Timing follows the scan plugin: one loop every --interval-min; within it the 8 sky presets, ~3 s apart, each
its own ts_ns shared by its RGB and thermal file. Days are whole local days: each runs from local midnight
to the next local midnight, in the time zone the registry gives the node at 12:00 UTC of that date. Across a
move (W056, 2023-05-20T00:00Z, Chicago → San Diego) a day is therefore 22–26 h long, with no gap or overlap.

Same arguments and seed give byte-identical files, with any --workers. A node folder is rebuilt from scratch
on rerun (only if it carries this generator's `.synthetic.json`); `complete: true` there marks a finished run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import os
import shutil
from collections import Counter
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
from astral import Observer
from astral.sun import azimuth as astral_azimuth
from PIL import Image
from tqdm import tqdm

from data.formats import KELVIN_STEP, SKY_PRESETS, rgb_name, thermal_name, thermal_plot_name
from data.sage.registry import node_period, sun_elevation
from data.synthetic.render import (
    EPOCH_S,
    CloudField,
    false_colour,
    node_key,
    preset_view,
    render_optical,
    render_thermal,
    to_pixels,
)
from sagecast_common.cli import make_parser
from sagecast_common.runio import atomic_path, atomic_write_json

SIZES = {"small": (768, 256, 112, 84), "full": (6144, 2048, 336, 252)}  # combined W, H; thermal w, h
FAULTS = ("plot_jpg", "missing_thermal", "position_mismatch", "truncated_csv", "corrupt_jpg")
PRESET_STEP_S = 3.0
JPEG_QUALITY = 90
LOOPS_PER_TASK = 12
PLUGIN_TAG = "0.23.11.02"
META_COLUMNS = ["timestamp", "name", "value", "meta.filename", "meta.host", "meta.job", "meta.node", "meta.plugin",
                "meta.task", "meta.vsn", "meta.zone", "meta.position", "meta.loop_num"]


def day_spans(vsn: str, start: dt.date, days: int) -> list[tuple[dt.date, int, int]]:
    """(local date, start ns, end ns) per day; midnights in the node's time zone on that date (see module doc)."""
    def midnight(d: dt.date) -> int:
        tz = node_period(vsn, pd.Timestamp(d).tz_localize("UTC") + pd.Timedelta(hours=12)).tz
        return pd.Timestamp(d).tz_localize(tz).value

    dates = [start + dt.timedelta(days=i) for i in range(days + 1)]
    return [(d, midnight(d), midnight(e)) for d, e in zip(dates, dates[1:], strict=False)]


@lru_cache(maxsize=2)
def _thermal_strings() -> np.ndarray:
    """The 16384 printable values of the 14-bit grid, formatted as `format_thermal_csv` does (%.6g)."""
    return np.array(["%.6g" % (k * KELVIN_STEP - 273.15) for k in range(2**14)], dtype=object)


def fast_thermal_csv(celsius: np.ndarray, *, sensor: str = "right", resolution: str = "high") -> str:
    """Byte-identical to `data.formats.format_thermal_csv`, ~10× faster: quantise, then look strings up."""
    counts = np.clip(np.rint((np.asarray(celsius, np.float64) + 273.15) / KELVIN_STEP), 0, 2**14 - 1)
    h, w = counts.shape
    header = (f"sensor;{sensor}\nbit depth;14 bit\nwidth;{w}\nheight;{h}\nresolution;{resolution}\n"
              f"advanced radiometry support;yes\nunit;degrees Celsius\n\n")
    rows = _thermal_strings()[counts.astype(np.int64)].tolist()
    return header + "\n".join(map(";".join, rows)) + "\n"


@lru_cache(maxsize=4)
def _field(seed: int, vsn: str, cloud_cover: float, wind_speed: float) -> CloudField:
    return CloudField(seed=seed, vsn=vsn, cloud_cover=cloud_cover, wind_speed=wind_speed)


@lru_cache(maxsize=2)
def _noise_pool(seed: int, n: int) -> np.ndarray:
    """Sensor noise (DN, σ≈1.5) to slice from: drawing fresh Gaussians per frame costs more than rendering it."""
    return np.rint(np.random.default_rng([seed, 2]).normal(0.0, 1.5, n + (1 << 20))).astype(np.int16)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _node_meta(vsn: str) -> dict[str, str]:
    key, low = node_key(vsn), vsn.lower()
    return {"host": f"0000{key:08x}0000.ws-rpi", "job": f"mobotix-sky-scan-{low}-synthetic",
            "node": f"000048b0{key:08x}",
            "plugin": f"registry.sagecontinuum.org/sagecast/mobotix-scan-synthetic:{PLUGIN_TAG}",
            "task": f"mobotix-sky-scan-{low}", "vsn": vsn, "zone": "shield"}


def _draw_fault(seed: int, key: int, nominal_s: int, pos: int, rate: float) -> tuple[str | None, int]:
    """(fault kind or None, position the thermal file will name). Own stream: faults never change the sky."""
    rng = np.random.default_rng([seed, key, nominal_s, pos, 1])
    if rng.random() >= rate:
        return None, pos
    fault = FAULTS[int(rng.integers(len(FAULTS)))]
    if fault == "position_mismatch":  # a second plugin moved the camera: the thermal names another preset
        return fault, int(rng.choice([p for p in SKY_PRESETS if p != pos]))
    return fault, pos


def _render_task(task: dict) -> tuple[list, list, list]:
    """Render and write the captures of a few loops. Returns (upload records, truth rows, fault rows)."""
    vsn, seed, node_dir = task["vsn"], task["seed"], Path(task["out"]) / task["vsn"]
    width, height, tw, th = SIZES[task["size"]]
    half = (height, width // 2, 3)
    field = _field(seed, vsn, task["cloud_cover"], task["wind_speed"])
    key, meta = node_key(vsn), _node_meta(vsn)
    url_base = f"https://storage.sagecontinuum.org/api/v1/data/{meta['job']}/sage-{meta['task']}-{PLUGIN_TAG}/{meta['node']}"
    noise = _noise_pool(seed, math.prod(half))
    records, truth, faults = [], [], []
    for loop_num, nominal_ns in task["loops"]:
        nominal_s = nominal_ns // 10**9
        jitter = np.random.default_rng([seed, key, nominal_s, 0])
        loop_ns = nominal_ns + int(jitter.uniform(0.2, 1.5) * 1e9)
        for i, pos in enumerate(SKY_PRESETS):
            ts_ns = loop_ns + int((i * PRESET_STEP_S + jitter.uniform(0.0, 0.3)) * 1e9)
            ts = pd.Timestamp(ts_ns // 1000 * 1000, tz="UTC")  # astral takes datetimes: microseconds
            t_s = ts_ns / 1e9 - EPOCH_S
            period = node_period(vsn, ts)
            sun_el = sun_elevation(vsn, ts)
            sun_az = float(astral_azimuth(Observer(period.lat, period.lon, period.elevation_m), ts.to_pydatetime()))
            rng = np.random.default_rng([seed, key, nominal_s, pos])
            view = preset_view(pos, width // 2, height, tw, th)
            celsius, cloud_fraction = render_thermal(field, view, t_s, rng)
            gain = 1 if sun_el > -6 else 2  # dark frames: higher gain, more noise
            start = int(rng.integers(0, noise.size - math.prod(half)))
            left = to_pixels(render_optical(field, view, t_s, sun_el, sun_az), width // 2, height,
                             gain * noise[start:start + math.prod(half)].reshape(half))
            jpg = _jpeg(np.concatenate([left, false_colour(celsius, width // 2, height)], axis=1))
            csv = fast_thermal_csv(celsius)
            truth.append((vsn, ts_ns, pos, loop_num, cloud_fraction, *field.wind(t_s), sun_el, sun_az, sun_el >= 0.0))

            fault, thermal_pos = _draw_fault(seed, key, nominal_s, pos, task["fault_rate"])
            rgb_file, thermal_file = rgb_name(width, height, pos), thermal_name(thermal_pos, width=tw, height=th)
            files = [("rgb", rgb_file, jpg[: len(jpg) // 3] if fault == "corrupt_jpg" else jpg, pos)]
            if fault == "truncated_csv":
                csv = csv[: len(csv) * 3 // 5]
            if fault != "missing_thermal":
                files.append(("thermal", thermal_file, csv.encode(), thermal_pos))
            if fault == "plot_jpg":  # the plugin's matplotlib figure; it ends in .jpg too
                files.append(("thermal", thermal_plot_name(pos, width=tw, height=th),
                              _jpeg(false_colour(celsius, tw * 2, th * 2)), pos))
            for kind, name, data, file_pos in files:
                (node_dir / kind / f"{ts_ns}-{name}").write_bytes(data)
                records.append((ts_ns, f"{url_base}/{ts_ns}-{name}", name, str(file_pos), str(loop_num)))
            if fault:
                fault_file = {"corrupt_jpg": rgb_file, "plot_jpg": files[-1][1]}.get(fault, thermal_file)
                faults.append((ts_ns, pos, fault, f"{ts_ns}-{fault_file}"))
    return records, truth, faults


def _write_tables(node_dir: Path, vsn: str, records: list, truth: list, faults: list) -> None:
    meta = _node_meta(vsn)
    rec = pd.DataFrame(records, columns=["ts_ns", "value", "meta.filename", "meta.position", "meta.loop_num"])
    rec = rec.sort_values(["ts_ns", "meta.filename"], kind="stable")
    rec.insert(0, "timestamp", pd.to_datetime(rec["ts_ns"], unit="ns", utc=True))
    rec.insert(1, "name", "upload")
    for k in ("host", "job", "node", "plugin", "task", "vsn", "zone"):
        rec[f"meta.{k}"] = meta[k]
    for day, group in rec.groupby(rec["timestamp"].dt.strftime("%Y-%m-%d"), sort=True):
        with atomic_path(node_dir / "sage_meta" / f"{day}.csv") as tmp:
            group[META_COLUMNS].to_csv(tmp, index=False)
    cols = ["vsn", "ts_ns", "position", "loop_num", "cloud_fraction", "wind_u", "wind_v", "sun_elevation",
            "sun_azimuth", "is_day"]
    tru = pd.DataFrame(truth, columns=cols).sort_values(["ts_ns", "position"], kind="stable")
    tru.insert(1, "timestamp", pd.to_datetime(tru["ts_ns"], unit="ns", utc=True))
    with atomic_path(node_dir / "truth.parquet") as tmp:
        tru.reset_index(drop=True).to_parquet(tmp, index=False)
    with atomic_path(node_dir / "faults.csv") as tmp:
        pd.DataFrame(faults, columns=["ts_ns", "position", "fault", "file"]).to_csv(tmp, index=False)


def _prepare_node_dir(node_dir: Path, run: dict) -> None:
    marker = node_dir / ".synthetic.json"
    if node_dir.exists() and any(node_dir.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{node_dir} exists and was not written by data.synthetic; refusing to overwrite")
        shutil.rmtree(node_dir)
    for kind in ("rgb", "thermal", "sage_meta"):
        (node_dir / kind).mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {**run, "complete": False})


def generate(out, *, nodes=("W056",), start="2023-05-18", days: int = 1, interval_min: float = 5.0, seed: int = 0,
             size: str = "small", cloud_cover: float = 0.5, wind_speed: float = 6.0, fault_rate: float = 0.01,
             hours: float | None = None, workers: int = 1, progress: bool = True) -> dict:
    """Write the synthetic raw layout under `out`; returns a summary (captures, files, faults per node)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not 0.0 <= cloud_cover <= 1.0 or not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"cloud_cover and fault_rate must be in [0, 1], got {cloud_cover}, {fault_rate}")
    if days < 1 or interval_min <= 0 or wind_speed < 0:
        raise ValueError(f"need days >= 1, interval_min > 0, wind_speed >= 0 "
                         f"(got {days}, {interval_min}, {wind_speed})")
    start_date = dt.date.fromisoformat(str(start))
    step_ns = int(round(interval_min * 60e9))
    out = Path(out)
    summary = {"out": str(out), "captures": 0, "files": 0, "faults": dict.fromkeys(FAULTS, 0), "nodes": {}}
    for vsn in [n.upper() for n in nodes]:
        spans = day_spans(vsn, start_date, days)
        t0, t1 = spans[0][1], spans[-1][2]
        if hours is not None:
            t1 = min(t1, t0 + int(hours * 3600e9))
        loops = [(k + 1, t0 + k * step_ns) for k in range(math.ceil((t1 - t0) / step_ns))]
        run = {"vsn": vsn, "seed": seed, "size": size, "cloud_cover": cloud_cover, "wind_speed": wind_speed,
               "fault_rate": fault_rate, "start": str(start_date), "days": days, "hours": hours,
               "interval_min": interval_min}
        _prepare_node_dir(out / vsn, run)
        tasks = [{**run, "out": str(out), "loops": loops[i:i + LOOPS_PER_TASK]}
                 for i in range(0, len(loops), LOOPS_PER_TASK)]
        records, truth, faults = [], [], []
        bar = tqdm(total=len(loops) * len(SKY_PRESETS), unit="capture", desc=vsn, disable=not progress)
        with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _InProcess() as pool:
            for task, (rec, tru, flt) in zip(tasks, pool.imap(_render_task, tasks), strict=True):
                records += rec
                truth += tru
                faults += flt
                bar.update(len(task["loops"]) * len(SKY_PRESETS))
        bar.close()
        _write_tables(out / vsn, vsn, records, truth, faults)
        counts = Counter(f[2] for f in faults)
        summary["nodes"][vsn] = {"captures": len(truth), "files": len(records), "faults": dict(sorted(counts.items())),
                                 "local_dates": [str(d) for d, _, _ in spans], "start_ns": t0, "end_ns": t1}
        summary["captures"] += len(truth)
        summary["files"] += len(records)
        for k, n in counts.items():
            summary["faults"][k] += n
        atomic_write_json(out / vsn / ".synthetic.json", {**run, "complete": True, "summary": summary["nodes"][vsn]})
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
                    help="small: JPG 768x256, thermal 112x84; full: 6144x2048, 336x252 (the camera's)")
    ap.add_argument("--cloud-cover", type=float, default=0.5, help="mean cloud cover 0..1 (it wanders around it)")
    ap.add_argument("--wind-speed", type=float, default=6.0, help="mean wind speed at cloud base, m/s")
    ap.add_argument("--fault-rate", type=float, default=0.01, help="fraction of captures given a fault (0 = none)")
    ap.add_argument("--hours", type=float, default=None, help="stop after this many hours (quick looks)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (1 = in-process)")
    args = ap.parse_args(argv)
    try:
        summary = generate(args.out, nodes=args.nodes, start=args.start, days=args.days, interval_min=args.interval_min,
                           seed=args.seed, size=args.size, cloud_cover=args.cloud_cover, wind_speed=args.wind_speed,
                           fault_rate=args.fault_rate, hours=args.hours, workers=args.workers)
    except (ValueError, LookupError, FileExistsError) as e:
        ap.error(str(e))
    print(json.dumps({k: summary[k] for k in ("out", "captures", "files", "faults")}))
    return summary


def cli() -> None:
    """Console script `sagecast-synthetic` (its exit status must not be the summary dict)."""
    main()


if __name__ == "__main__":
    main()
