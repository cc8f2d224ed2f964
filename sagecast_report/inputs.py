"""What the report reads: files that the data step and both stages wrote, and nothing else.

Every reader returns None when its file is absent, so the report says "not available" instead of failing; only
the prepared index is required. A file that exists but cannot be read (truncated, not JSON, not parquet, a
column missing) is a UserError naming it: the CLI turns that into one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sagecast_common.cli import UserError, require

# The columns the figures use, of the files stage 1 and stage 2 evaluate write for the report.
PCA_COLUMNS = ["solar_hour", "features", "branch", "pc1", "pc2"]
FORECAST_COLUMNS = ["method", "run", "sample", "vsn", "date", "horizon_min", "preset",
                    *(f"{w}_{c}" for w in ("anchor", "target", "nearest")
                      for c in ("time", "solar_hour", "row", "cloud_fraction")), "nearest_distance"]


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None


def read_parquet(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    """`columns` of the table at `path` (None: all of them)."""
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        wanted = f" with the columns {', '.join(columns)}" if columns else ""
        raise UserError(f"{path} is not a readable parquet file{wanted} ({e})") from None


def read_index(prepared: Path) -> pd.DataFrame:
    path = require(prepared / "index.parquet", what="prepared index", made_by="make data (python -m data.prepare)")
    index = read_parquet(path, None)
    ts = pd.to_datetime(index["timestamp"], utc=True)
    index["solar_hour"] = (ts.dt.hour + ts.dt.minute / 60 + ts.dt.second / 3600 + index["lon"] / 15) % 24
    return index


def read_frames(prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """The prepared arrays (rgb uint8, thermal °C), memory-mapped."""
    frames = []
    for name in ("rgb.npy", "thermal.npy"):
        path = require(prepared / name, what="prepared frames", made_by="make data (python -m data.prepare)")
        try:
            frames.append(np.load(path, mmap_mode="r"))
        except (ValueError, OSError) as e:
            raise UserError(f"{path} is not a readable .npy array ({e})") from None
    return frames[0], frames[1]


def read_truth(prepared: Path, vsns) -> pd.DataFrame | None:
    """Synthetic data only: RAW/<VSN>/truth.parquet of every node (raw dir from PREPARED/report.json)."""
    raw = (read_json(prepared / "report.json") or {}).get("raw")
    files = [Path(raw) / vsn / "truth.parquet" for vsn in vsns] if raw else []
    if not files or not all(f.is_file() for f in files):
        return None
    truth = pd.concat([read_parquet(f, None) for f in files], ignore_index=True)
    truth["timestamp"] = pd.to_datetime(truth["timestamp"], utc=True)
    return truth


def frames_match(index: pd.DataFrame, rows, vsn, position) -> bool:
    """Whether prepared rows `rows` are the frames of (vsn, position) in `index`: a file written on another
    prepared folder (a held-out evaluation) names rows this folder does not have, or has for other frames."""
    by_row = index.set_index("row")[["vsn", "position"]]
    rows = np.asarray(rows)
    if not np.isin(rows, by_row.index).all():
        return False
    found = by_row.loc[rows]
    return bool((found["vsn"].to_numpy() == np.asarray(vsn)).all()
                and (found["position"].to_numpy() == np.asarray(position)).all())


def stage2_runs(stage2: Path) -> list[Path]:
    """Stage-2 run folders under STAGE2 (those with a ckpt.pt), in name order."""
    return sorted(p for p in stage2.iterdir() if (p / "ckpt.pt").is_file()) if stage2.is_dir() else []
