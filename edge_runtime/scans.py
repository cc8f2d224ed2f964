"""Captures (one RGB JPG + one thermal CSV of one preset at one time) grouped into scans (one camera loop).

File names as sagecast-download and sagecast-synthetic store them: RAW/<VSN>/{rgb,thermal}/{ts_ns}-{filename},
with the Mobotix plugin's `..._position<N>.jpg` and `...thermal.celsius_position<N>.csv`. A new scan starts
when the gap to the previous capture exceeds `gap_s` (stage2_forecast.samples does the same) or the node
changes; a scan's time is its first capture's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

STORED = re.compile(r"^(?P<ts>\d{16,20})-(?P<name>.+)$")
POSITION = re.compile(r"_position(?P<pos>\d+)\.[A-Za-z]+$")


def file_kind(filename: str) -> str | None:
    """'rgb', 'thermal' or None (plots, uint CSVs, .raw, ...), as data.formats classifies names."""
    low = filename.lower()
    if "celsius_plot" in low:
        return None
    if ".thermal.celsius" in low and low.endswith(".csv"):
        return "thermal"
    if low.endswith((".jpg", ".jpeg")) and "thermal" not in low:
        return "rgb"
    return None


def position(filename: str) -> int | None:
    m = POSITION.search(filename)
    return int(m["pos"]) if m else None


@dataclass
class Scan:
    vsn: str
    time_ns: int
    files: dict[int, dict[str, Path]] = field(default_factory=dict)  # preset → {"rgb": path, "thermal": path}
    last_ns: int = 0

    def add(self, ts_ns: int, kind: str, pos: int, path: Path) -> None:
        self.files.setdefault(pos, {}).setdefault(kind, path)  # a second file of a kind: the first one stays
        self.last_ns = max(self.last_ns, ts_ns)


class ScanGrouper:
    """Feed files in time order; `add` returns the scan that a new one closes, `flush` the open one."""

    def __init__(self, gap_s: float):
        self.gap_ns, self.open = int(gap_s * 1e9), None

    def add(self, vsn: str, ts_ns: int, filename: str, path: Path) -> Scan | None:
        kind, pos = file_kind(filename), position(filename)
        if kind is None or pos is None:
            return None
        done = None
        if self.open is not None and (vsn != self.open.vsn or ts_ns - self.open.last_ns > self.gap_ns):
            done, self.open = self.open, None
        if self.open is None:
            self.open = Scan(vsn, ts_ns, last_ns=ts_ns)
        self.open.add(ts_ns, kind, pos, path)
        return done

    def flush(self) -> Scan | None:
        done, self.open = self.open, None
        return done


def stored_files(raw: Path) -> list[tuple[str, int, str, Path]]:
    """(vsn, ts_ns, filename, path) of every stored upload under RAW/<VSN>/{rgb,thermal}/, per node in time order."""
    out = []
    for node in sorted(p for p in raw.iterdir() if p.is_dir()):
        for kind in ("rgb", "thermal"):
            for path in sorted((node / kind).glob("*")) if (node / kind).is_dir() else ():
                if m := STORED.match(path.name):
                    out.append((node.name.upper(), int(m["ts"]), m["name"], path))
    return sorted(out, key=lambda f: (f[0], f[1], f[2]))  # node by node: a node change also ends a scan


def scans_in(files: Iterable[tuple[str, int, str, Path]], gap_s: float) -> Iterator[Scan]:
    grouper = ScanGrouper(gap_s)
    for f in files:
        if (scan := grouper.add(*f)) is not None:
            yield scan
    if (scan := grouper.flush()) is not None:
        yield scan
