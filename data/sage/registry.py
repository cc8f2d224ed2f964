"""Node registry: where a SAGE node stood at a given time, and whether the sun was up there.

Nodes move (W056 went from Argonne to San Diego in May 2023), so location is a function of (vsn, time).
The registry is a small JSON file of dated periods per VSN: `data/sage/nodes.json` by default, or the file named
by the environment variable SAGECAST_NODES. Edit it by hand or with `python -m data.sage.nodes update`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
from astral import Observer
from astral.sun import elevation as astral_elevation

from sagecast_common.cli import UserError
from sagecast_common.runio import atomic_write_text

DEFAULT_REGISTRY = Path(__file__).with_name("nodes.json")


class RegistryError(LookupError):
    pass


class RegistryFileError(RegistryError, UserError):
    """The registry file itself is missing, unreadable or not registry JSON: one line, exit 2 in every CLI."""


@dataclass(frozen=True)
class Period:
    start: pd.Timestamp | None  # inclusive, UTC; None = open
    end: pd.Timestamp | None  # exclusive, UTC; None = open
    lat: float
    lon: float
    elevation_m: float
    tz: str
    source: str

    def contains(self, when: pd.Timestamp) -> bool:
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)

    def to_json(self) -> dict:
        def iso(t):
            return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")

        return {"from": iso(self.start), "to": iso(self.end), "lat": self.lat, "lon": self.lon,
                "elevation_m": self.elevation_m, "tz": self.tz, "source": self.source}


def registry_path() -> Path:
    return Path(os.environ.get("SAGECAST_NODES") or DEFAULT_REGISTRY)


def to_utc(when) -> pd.Timestamp:
    """A UTC pandas Timestamp from a datetime, Timestamp, ISO string or integer nanoseconds.

    Naive times are taken as UTC (SAGE records are UTC).
    """
    ts = pd.Timestamp(when)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _parse_time(value) -> pd.Timestamp | None:
    return None if value is None else to_utc(value)


def parse_registry(raw: dict, *, origin: str = "registry") -> dict[str, list[Period]]:
    nodes: dict[str, list[Period]] = {}
    for vsn, periods in raw.items():
        if vsn.startswith("_"):
            continue
        parsed = []
        for i, p in enumerate(periods):
            try:
                parsed.append(Period(_parse_time(p.get("from")), _parse_time(p.get("to")), float(p["lat"]),
                                     float(p["lon"]), float(p.get("elevation_m") or 0.0), str(p["tz"]),
                                     str(p.get("source", ""))))
            except (KeyError, TypeError, ValueError) as e:
                raise RegistryError(f"{origin}: {vsn} period {i} is malformed ({e!r})") from None
        nodes[vsn.upper()] = parsed
    return nodes


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict[str, list[Period]]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:  # e.g. a file cut short by a full disk or a kill
        raise RegistryFileError(f"node registry {path} cannot be read as JSON ({type(e).__name__}: {e}); "
                                f"fix or restore it (data/sage/nodes.json is the shipped one)") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for k, v in raw.items() if not k.startswith("_")):
        raise RegistryFileError(f"node registry {path} is not a JSON object of VSN -> list of periods")
    try:
        return parse_registry(raw, origin=path)
    except RegistryError as e:
        raise RegistryFileError(str(e)) from None


def load_registry(path: str | os.PathLike | None = None) -> dict[str, list[Period]]:
    p = Path(path) if path else registry_path()
    if not p.is_file():
        raise RegistryFileError(f"node registry {p} does not exist (or is not a file)")
    return _load(str(p), p.stat().st_mtime)


def node_period(vsn: str, when, *, registry: str | os.PathLike | None = None) -> Period:
    """The registry period for `vsn` that contains the UTC time `when`; a clear error if none does."""
    ts = to_utc(when)
    nodes = load_registry(registry)
    key = vsn.upper()
    if key not in nodes:
        raise RegistryError(f"unknown node {vsn!r} at {ts.isoformat()}: not in the node registry "
                            f"{registry or registry_path()} (known: {sorted(nodes)}); add a period for it")
    for period in nodes[key]:
        if period.contains(ts):
            return period
    raise RegistryError(f"node {vsn} has no registry period containing {ts.isoformat()}; "
                        f"edit {registry or registry_path()} or run `python -m data.sage.nodes update --vsn {vsn}`")


def node_location(vsn: str, when, *, registry: str | os.PathLike | None = None) -> tuple[float, float]:
    """(latitude, longitude) in degrees of node `vsn` at the UTC time `when`."""
    p = node_period(vsn, when, registry=registry)
    return p.lat, p.lon


def sun_elevation(vsn: str, when, *, registry: str | os.PathLike | None = None) -> float:
    """Solar elevation in degrees above the horizon at the node's location at that time (astral)."""
    ts = to_utc(when)
    p = node_period(vsn, ts, registry=registry)
    observer = Observer(latitude=p.lat, longitude=p.lon, elevation=p.elevation_m)
    # datetime holds microseconds; SAGE timestamps carry nanoseconds that do not matter for the sun.
    return float(astral_elevation(observer, ts.floor("us").to_pydatetime()))


def is_day(vsn: str, when, *, min_elevation: float = 0.0, registry: str | os.PathLike | None = None) -> bool:
    """True when the sun is at least `min_elevation` degrees up (0 = horizon, -6 = civil twilight)."""
    return sun_elevation(vsn, when, registry=registry) >= min_elevation


def local_date(vsn: str, when, *, registry: str | os.PathLike | None = None) -> dt.date:
    """The calendar date in the node's time zone at that time (splits are by whole local days)."""
    ts = to_utc(when)
    return ts.tz_convert(node_period(vsn, ts, registry=registry).tz).date()


def save_registry(nodes: dict[str, list[Period]], path: str | os.PathLike | None = None) -> Path:
    """Write the registry atomically, keeping the file's `_comment` and other `_` keys."""
    p = Path(path) if path else registry_path()
    raw = json.loads(p.read_text()) if p.exists() else {}
    out = {k: v for k, v in raw.items() if k.startswith("_")}
    out.update({vsn: [q.to_json() for q in periods] for vsn, periods in sorted(nodes.items())})
    atomic_write_text(p, json.dumps(out, indent=2) + "\n")
    return p
