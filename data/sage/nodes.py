"""Node location history in the registry: `python -m data.sage.nodes update|show`.

    python -m data.sage.nodes update --vsn W056 [--start 2023-01-01] [--end 2024-01-01] [--endpoint URL]
                                [--manifest-url URL] [--tz America/Chicago] [--replace]
    python -m data.sage.nodes show W056

`update` takes daily means of the node's `sys.gps.lat|lon|alt` series from the data API (only days with a
GPS fix exist), starts a new dated period wherever the node jumps by more than --jump-km, and merges the
periods into the registry (SAGECAST_NODES, or --registry). With no GPS history it falls back to the manifest
API's current coordinates (a period from today on). Periods written by hand are kept, and GPS periods only
fill the time they leave free, unless --replace. Time zones: a new period takes the zone of a registry
period within --jump-km, else --tz, else the IANA zone at its coordinates from timezonefinder's offline
boundary data (so daylight saving is right; over the open sea it gives the nautical `Etc/GMT±N`).
"""

from __future__ import annotations

import functools
import json
import math
import urllib.request
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from data.sage.query import QUERY_ENDPOINT, query
from data.sage.registry import Period, load_registry, registry_path, save_registry, to_utc
from sagecast_common.cli import Parser, UserError, make_parser, run_cli

MANIFEST_URL = "https://auth.sagecontinuum.org/manifests"
TOOL_SOURCES = ("sys.gps", "manifest")  # periods whose source starts so were written by `update`


def distance_km(lat1, lon1, lat2, lon2) -> float:
    """Great-circle distance (haversine, spherical Earth)."""
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lon2 - lon1))
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, a)))


def daily_gps(vsn: str, start, end, *, endpoint: str, chunk_days: int = 7) -> pd.DataFrame:
    """Columns day (UTC midnight), lat, lon, alt: the mean of each day's fixes; (0, 0) fixes dropped."""
    edges = list(pd.date_range(start, end, freq=f"{chunk_days}D")) + [end]
    frames = []
    for a, b in tqdm(list(zip(edges[:-1], edges[1:], strict=True)), desc=f"gps {vsn}", unit="chunk"):
        if a < b:
            frames.append(query(a, b, {"vsn": vsn, "name": "sys.gps.lat|sys.gps.lon|sys.gps.alt"},
                                endpoint=endpoint))
    df = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=["timestamp", "name", "value"])])
    if df.empty:
        return pd.DataFrame(columns=["day", "lat", "lon", "alt"])
    df = df.assign(day=pd.to_datetime(df["timestamp"], utc=True).dt.floor("D"),
                   value=pd.to_numeric(df["value"], errors="coerce"))
    wide = df.pivot_table(index="day", columns="name", values="value", aggfunc="mean")
    wide = wide.rename(columns={"sys.gps.lat": "lat", "sys.gps.lon": "lon", "sys.gps.alt": "alt"})
    wide = wide.reindex(columns=["lat", "lon", "alt"]).dropna(subset=["lat", "lon"])
    wide = wide[(wide["lat"].abs() > 1e-6) | (wide["lon"].abs() > 1e-6)]
    return wide.reset_index().rename_axis(columns=None)


def manifest_location(vsn: str, manifest_url: str, *, timeout: float = 30.0) -> tuple[float, float] | None:
    url = f"{manifest_url.rstrip('/')}/{vsn}/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        print(f"manifest {url}: {e}")
        return None
    lat, lon = info.get("gps_lat"), info.get("gps_lon")
    return None if lat is None or lon is None else (float(lat), float(lon))


def guess_tz(lat: float, lon: float, existing: list[Period], tz: str | None, jump_km: float) -> str:
    for p in existing:
        if distance_km(lat, lon, p.lat, p.lon) <= jump_km:
            return p.tz
    if tz:
        return tz
    return _zone_finder().timezone_at(lat=lat, lng=lon) or "Etc/UTC"


@functools.cache
def _zone_finder():
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


def gps_periods(days: pd.DataFrame, *, jump_km: float, existing: list[Period], tz: str | None) -> list[Period]:
    """Consecutive days within jump_km of their segment's first day form one period (median position)."""
    segments: list[list] = []
    for row in days.sort_values("day").itertuples():
        if segments and distance_km(segments[-1][0].lat, segments[-1][0].lon, row.lat, row.lon) <= jump_km:
            segments[-1].append(row)
        else:
            segments.append([row])
    periods = []
    for i, seg in enumerate(segments):
        lat = float(pd.Series([r.lat for r in seg]).median())
        lon = float(pd.Series([r.lon for r in seg]).median())
        alt = pd.Series([r.alt for r in seg]).median()
        end = segments[i + 1][0].day if i + 1 < len(segments) else None
        periods.append(Period(seg[0].day, end, round(lat, 5), round(lon, 5),
                              0.0 if pd.isna(alt) else round(float(alt), 1), guess_tz(lat, lon, existing, tz, jump_km),
                              f"sys.gps daily means, {len(seg)} days {seg[0].day:%Y-%m-%d}..{seg[-1].day:%Y-%m-%d}"))
    return periods


def _bounds(p: Period) -> tuple[float, float]:
    return (-math.inf if p.start is None else p.start.value), (math.inf if p.end is None else p.end.value)


def _overlaps(p: Period, q: Period) -> bool:
    (a0, a1), (b0, b1) = _bounds(p), _bounds(q)
    return max(a0, b0) < min(a1, b1)


def minus(p: Period, blockers: list[Period]) -> list[Period]:
    """The parts of p's time span that no blocker covers, with p's location."""
    pieces = [_bounds(p)]
    for b0, b1 in map(_bounds, blockers):
        pieces = [q for a0, a1 in pieces for q in ((a0, min(a1, b0)), (max(a0, b1), a1)) if q[0] < q[1]]
    ts = lambda v: None if math.isinf(v) else pd.Timestamp(int(v), tz="UTC")
    return [Period(ts(a), ts(b), p.lat, p.lon, p.elevation_m, p.tz, p.source) for a, b in pieces]


def merge(old: list[Period], new: list[Period], *, replace: bool) -> list[Period]:
    """Hand-written periods win; new periods fill what they leave; older tool periods fill the rest."""
    if replace:
        merged = list(new)
    else:
        hand = [p for p in old if not p.source.startswith(TOOL_SOURCES)]
        tool = [p for p in old if p.source.startswith(TOOL_SOURCES)]
        fresh = [q for p in new for q in minus(p, hand)]
        merged = hand + fresh + [q for p in tool for q in minus(p, hand + fresh)]
    return sorted(merged, key=lambda p: _bounds(p)[0])


def show(vsn: str, registry=None) -> str:
    periods = load_registry(registry).get(vsn.upper(), [])
    if not periods:
        return f"{vsn}: no periods in {registry or registry_path()}"
    rows = [{k: "open" if v is None else v for k, v in p.to_json().items()} for p in periods]
    return f"{vsn.upper()} ({registry or registry_path()}):\n" + pd.DataFrame(rows).to_string(index=False)


def update(args) -> None:
    vsn = args.vsn.upper()
    path = args.registry or registry_path()
    nodes = dict(load_registry(path)) if path.exists() else {}
    old = nodes.get(vsn, [])
    days = daily_gps(vsn, to_utc(args.start), to_utc(args.end or pd.Timestamp.now(tz="UTC").ceil("D")),
                     endpoint=args.endpoint)
    new = gps_periods(days, jump_km=args.jump_km, existing=old, tz=args.tz) if len(days) else []
    if not new:
        loc = manifest_location(vsn, args.manifest_url)
        if loc is None:
            raise UserError(f"{vsn}: no GPS history between {args.start} and {args.end or 'now'} and no "
                             f"manifest coordinates: registry unchanged")
        today = pd.Timestamp.now(tz="UTC").floor("D")
        new = [Period(None if not old else today, None, loc[0], loc[1], 0.0,
                      guess_tz(*loc, old, args.tz, args.jump_km), f"manifest {today:%Y-%m-%d}: current coordinates")]
    if not args.replace:
        for p in new:
            for h in old:
                if not h.source.startswith(TOOL_SOURCES) and _overlaps(p, h) and \
                        distance_km(p.lat, p.lon, h.lat, h.lon) > args.jump_km:
                    print(f"warning: GPS puts {vsn} at ({p.lat}, {p.lon}) during a hand-written period at "
                          f"({h.lat}, {h.lon}); kept the hand-written one (--replace overwrites it)")
    nodes[vsn] = merge(old, new, replace=args.replace)
    save_registry(nodes, path)
    print(f"{len(new)} period(s) from {'GPS' if len(days) else 'the manifest'}; wrote {path}")


def main(argv=None) -> None:
    ap = make_parser("sagecast-nodes", __doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser, help="update | show")
    up = sub.add_parser("update", help="merge GPS history (or the manifest's coordinates) into the registry",
                        formatter_class=ap.formatter_class)
    up.add_argument("--vsn", required=True, help="node, e.g. W056")
    up.add_argument("--start", default="2021-01-01", help="UTC start of the GPS history")
    up.add_argument("--end", help="UTC end (default: now)")
    up.add_argument("--endpoint", default=QUERY_ENDPOINT, help="data API query endpoint")
    up.add_argument("--manifest-url", default=MANIFEST_URL, help="manifest API base")
    up.add_argument("--tz", help="IANA time zone for periods not near a known one")
    up.add_argument("--jump-km", type=float, default=5.0, help="a move larger than this starts a new period")
    up.add_argument("--replace", action="store_true", help="replace this node's periods, hand-written too")
    sh = sub.add_parser("show", help="print a node's periods", formatter_class=ap.formatter_class)
    sh.add_argument("vsn", help="node, e.g. W056")
    for p in (up, sh):
        p.add_argument("--registry", type=Path,
                       help="registry JSON (default: $SAGECAST_NODES or data/sage/nodes.json)")
    args = ap.parse_args(argv)

    def run() -> None:
        if args.command == "update":
            update(args)
        print(show(args.vsn, args.registry or (None if args.command == "show" else registry_path())))

    run_cli(run, prog=ap.prog)


if __name__ == "__main__":
    main()
