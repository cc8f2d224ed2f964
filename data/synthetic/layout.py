"""The SAGE download layout the synthetic sky writes: day spans, upload records, thermal CSV text, faults, tables.

`python -m data.synthetic` (data.synthetic.generate) calls these; tests use them to check what it wrote.
"""

from __future__ import annotations

import datetime as dt
import shutil
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from data.formats import KELVIN_STEP, preset_row, row_presets
from data.sage.registry import node_period
from data.synthetic.oracle import TRUTH_COLUMNS
from sagecast_common.runio import atomic_path, atomic_write_json

FAULTS = ("plot_jpg", "missing_thermal", "position_mismatch", "truncated_csv", "corrupt_jpg")
PLUGIN_TAG = "0.23.11.02"
META_COLUMNS = ["timestamp", "name", "value", "meta.filename", "meta.host", "meta.job", "meta.node", "meta.plugin",
                "meta.task", "meta.vsn", "meta.zone", "meta.position", "meta.loop_num"]


def node_key(vsn: str) -> int:
    return zlib.crc32(vsn.upper().encode())


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


def node_meta(vsn: str) -> dict[str, str]:
    key, low = node_key(vsn), vsn.lower()
    return {"host": f"0000{key:08x}0000.ws-rpi", "job": f"mobotix-sky-scan-{low}-synthetic",
            "node": f"000048b0{key:08x}",
            "plugin": f"registry.sagecontinuum.org/sagecast/mobotix-scan-synthetic:{PLUGIN_TAG}",
            "task": f"mobotix-sky-scan-{low}", "vsn": vsn, "zone": "shield"}


def draw_fault(seed: int, key: int, nominal_s: int, pos: int, rate: float) -> tuple[str | None, int]:
    """(fault kind or None, position the thermal file will name). Own stream: faults never change the sky."""
    rng = np.random.default_rng([seed, key, nominal_s, pos, 1])
    if rng.random() >= rate:
        return None, pos
    fault = FAULTS[int(rng.integers(len(FAULTS)))]
    if fault == "position_mismatch":  # a second plugin moved the camera: the thermal names another preset
        return fault, int(rng.choice([p for p in row_presets((preset_row(pos),)) if p != pos]))
    return fault, pos


def write_tables(node_dir: Path, vsn: str, records: list, truth: list, faults: list) -> None:
    """sage_meta/<UTC date>.csv, truth.parquet (columns: data.synthetic.oracle) and faults.csv."""
    meta = node_meta(vsn)
    rec = pd.DataFrame(records, columns=["ts_ns", "value", "meta.filename", "meta.position", "meta.loop_num"])
    rec = rec.sort_values(["ts_ns", "meta.filename"], kind="stable")
    rec.insert(0, "timestamp", pd.to_datetime(rec["ts_ns"], unit="ns", utc=True))
    rec.insert(1, "name", "upload")
    for k in ("host", "job", "node", "plugin", "task", "vsn", "zone"):
        rec[f"meta.{k}"] = meta[k]
    for day, group in rec.groupby(rec["timestamp"].dt.strftime("%Y-%m-%d"), sort=True):
        with atomic_path(node_dir / "sage_meta" / f"{day}.csv") as tmp:
            group[META_COLUMNS].to_csv(tmp, index=False)
    tru = pd.DataFrame(truth, columns=TRUTH_COLUMNS).sort_values(["ts_ns", "position"], kind="stable")
    tru.insert(1, "timestamp", pd.to_datetime(tru["ts_ns"], unit="ns", utc=True))
    with atomic_path(node_dir / "truth.parquet") as tmp:
        tru.reset_index(drop=True).to_parquet(tmp, index=False)
    with atomic_path(node_dir / "faults.csv") as tmp:
        pd.DataFrame(faults, columns=["ts_ns", "position", "fault", "file"]).to_csv(tmp, index=False)


def prepare_node_dir(node_dir: Path, run: dict) -> None:
    marker = node_dir / ".synthetic.json"
    if node_dir.exists() and any(node_dir.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{node_dir} exists and was not written by data.synthetic; refusing to overwrite")
        shutil.rmtree(node_dir)
    for kind in ("rgb", "thermal", "sage_meta"):
        (node_dir / kind).mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {**run, "complete": False})
