"""A stand-in for SAGE's data API, file storage and manifest service on 127.0.0.1 (tests, offline trials).

    python -m data.synthetic --out runs/double/raw --nodes W056 --start 2023-05-18 --days 1
    python -m tests.sage_double --root runs/double/raw --port 8765 --user me --token secret
    SAGE_USER=me SAGE_TOKEN=secret python -m data.sage.download --vsn W056 --start 2023-05-18 --end 2023-05-19 \
        --out runs/double/got --endpoint http://127.0.0.1:8765/api/v1/query --storage-url http://127.0.0.1:8765

Routes: `POST /api/v1/query` with the real API's rules (body <= 4096 bytes, unknown fields -> 400, `start`
required, bare filter keys, `|` / `*` / exact values, `( ) $ { }` refused, head/tail per series, NDJSON in
no time order); `GET|HEAD /api/v1/data/...` behind HTTP Basic (401 without; any user unless --user/--token),
single Range requests (`public=True`: no credentials needed); `GET /manifests/<VSN>/`. Upload records
come from `ROOT/<VSN>/sage_meta/*.csv` (their storage URLs keep the real host: point the downloader's
--storage-url here); the files from `ROOT/<VSN>/rgb|thermal/`; `sys.gps.lat|lon` records from a GPS track
(--gps-csv vsn,timestamp,lat,lon).
Faults: `fail(path, kind, times, method="GET")` (HEAD too) or `fault_rate` over storage GETs; kinds: 500,
429 (with `Retry-After: retry_after`), slow (answer after `slow_s`), drop (connection closed mid-body),
bad_length (Content-Length too large), bad_header (a malformed Content-Length), no_length (no
Content-Length, cut short), huge (Content-Length 10**11, then the file over and over), endless (no
Content-Length, the file over and over until the client hangs up), html (an HTML error page as 200), 401,
403, 404. The HTTP side is
tests/sage_double_http.py.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import defaultdict, deque
from http.server import ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pandas as pd

from data.sage.query import load_query_csv
from data.sage.registry import to_utc
from tests.sage_double_http import Handler, QueryRejected

QUERY_FIELDS = {"start", "end", "head", "tail", "filter", "bucket", "experimental_func", "experimental_window"}
FAULTS = ("500", "429", "slow", "drop", "bad_length", "bad_header", "no_length", "huge", "endless", "html", "401",
          "403", "404")


def rfc3339(ts_ns: int) -> str:
    frac = f"{ts_ns % 10**9:09d}".rstrip("0")
    return pd.Timestamp(ts_ns - ts_ns % 10**9, tz="UTC").strftime("%Y-%m-%dT%H:%M:%S") + \
        (f".{frac}" if frac else "") + "Z"


def _matcher(value: str):
    if "|" in value:
        return re.compile(f"^({value})$").match
    if "*" in value:
        return re.compile(f"^{value}$").match
    return lambda s: s == value


class SageDouble:
    def __init__(self, root=None, *, user=None, token=None, public=False, gps=None, manifest=None, latency=0.0,
                 slow_s=5.0, trickle_s=0.0, ignore_range=False, retry_after="0", fault_rate=0.0,
                 fault_kinds=("500", "drop"), seed=0, port=0, lifetime_s: float | None = 300.0):
        self.root = Path(root) if root else None
        self.user, self.token, self.public = user, token, public
        self.streamed = 0  # body bytes written by the huge/endless faults
        self.latency, self.slow_s, self.trickle_s, self.ignore_range = latency, slow_s, trickle_s, ignore_range
        self.retry_after = retry_after
        self.fault_rate, self.fault_kinds, self.rng = fault_rate, fault_kinds, random.Random(seed)
        self.records, self.files, self.redirects = [], {}, {}
        self.manifest, self.given_manifest = dict(manifest or {}), set(manifest or {})
        self.faults: dict[tuple[str, str], deque] = defaultdict(deque)  # (method, path) -> kinds
        self.log: list[dict] = []  # one entry per request; never the Authorization value
        self.lock = threading.Lock()
        if self.root:
            self._load_root()
        for vsn, track in (gps or {}).items():
            self.add_gps(vsn, track)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.double = self
        self.server.handle_error = lambda *a: None  # clients hanging up mid-answer are expected here
        self.lifetime_s, self.timer = lifetime_s, None

    # --- content ----------------------------------------------------------------------------------
    def _load_root(self) -> None:
        seen = set()
        for csv in sorted(self.root.glob("*/sage_meta/*.csv")):
            df = load_query_csv(csv)
            for rec in df.to_dict("records"):
                meta = {k[5:]: str(v) for k, v in rec.items() if k.startswith("meta.") and v != ""}
                key = (rec["timestamp"].value, rec["name"], rec["value"])
                if key not in seen:
                    seen.add(key)
                    self.add_record(rec["timestamp"].value, rec["name"], rec["value"], meta)
                if rec["name"] == "upload":
                    stored = unquote(PurePosixPath(urlsplit(rec["value"]).path).name)
                    for kind in ("rgb", "thermal"):
                        path = self.root / meta.get("vsn", "") / kind / stored
                        if len(stored.encode()) <= 255 and path.is_file():  # a longer name cannot be a file
                            self.files[urlsplit(rec["value"]).path] = path

    def add_record(self, ts_ns: int, name: str, value, meta: dict) -> None:
        self.records.append({"ts": int(ts_ns), "name": name, "value": value, "meta": dict(meta)})

    def add_file(self, url_path: str, data: bytes) -> None:
        self.files[url_path] = data

    def add_gps(self, vsn: str, track) -> None:
        """track: iterable of (time, lat, lon); the manifest reports the last fix unless given."""
        meta = {"vsn": vsn, "node": f"0000{vsn.lower()}", "host": f"{vsn.lower()}.ws-nxcore",
                "plugin": "waggle/gps", "sensor": "gps"}
        for when, lat, lon in track:
            ts = to_utc(when)
            self.add_record(ts.value, "sys.gps.lat", float(lat), meta)
            self.add_record(ts.value, "sys.gps.lon", float(lon), meta)
            if vsn not in self.given_manifest:
                self.manifest[vsn] = {"vsn": vsn, "gps_lat": float(lat), "gps_lon": float(lon), "address": ""}

    def fail(self, url_path: str, kind: str, times: int = 1, method: str = "GET") -> None:
        assert kind in FAULTS, kind
        self.faults[method, url_path].extend([kind] * times)

    # --- query ------------------------------------------------------------------------------------
    def run_query(self, body: bytes) -> list[dict]:
        if len(body) > 4096:
            raise QueryRejected("request body too large (limit 4096 bytes)")
        try:
            q = json.loads(body)
        except ValueError:
            raise QueryRejected("body is not JSON") from None
        if not isinstance(q, dict):
            raise QueryRejected("body must be a JSON object")
        if unknown := set(q) - QUERY_FIELDS:
            raise QueryRejected(f"unknown fields {sorted(unknown)}")
        if "start" not in q:
            raise QueryRejected("start is required")
        if q.get("head") is not None and q.get("tail") is not None:
            raise QueryRejected("only one of head or tail")
        start = pd.Timestamp(q["start"]).value
        end = pd.Timestamp(q["end"]).value if q.get("end") else None
        tests = []
        for key, value in (q.get("filter") or {}).items():
            if not isinstance(value, str) or set(value) & set("()${}"):
                raise QueryRejected(f"invalid filter value for {key}")
            tests.append((key, _matcher(value)))
        series = defaultdict(list)
        for r in self.records:
            if r["ts"] < start or (end is not None and r["ts"] >= end):
                continue
            if all(m(r["name"] if k == "name" else r["meta"].get(k, "")) for k, m in tests):
                series[(r["name"], tuple(sorted(r["meta"].items())))].append(r)
        out = []
        for recs in series.values():
            recs.sort(key=lambda r: r["ts"])
            if q.get("head") is not None:
                recs = recs[:int(q["head"])]
            elif q.get("tail") is not None:
                recs = recs[len(recs) - int(q["tail"]):] if int(q["tail"]) else []
            out += recs
        with self.lock:
            self.rng.shuffle(out)  # the real API does not sort by time either
        return [{"timestamp": rfc3339(r["ts"]), "name": r["name"], "value": r["value"], "meta": r["meta"]}
                for r in out]

    # --- lifecycle ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> SageDouble:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        if self.lifetime_s:
            self.timer = threading.Timer(self.lifetime_s, self.stop)
            self.timer.daemon = True
            self.timer.start()
        return self

    def stop(self) -> None:
        if self.timer:
            self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> SageDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.sage_double", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="a RAW dir (e.g. from data.synthetic) whose files to serve")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--user", help="accepted user name (default: any)")
    ap.add_argument("--token", help="accepted token")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of file requests that fail (500/drop)")
    ap.add_argument("--gps-csv", type=Path, help="GPS track: CSV with columns vsn,timestamp,lat,lon")
    ap.add_argument("--lifetime", type=float, default=0, help="stop after this many seconds (0 = Ctrl-C)")
    args = ap.parse_args()
    gps = {}
    if args.gps_csv:
        for vsn, g in pd.read_csv(args.gps_csv).groupby("vsn"):
            gps[vsn] = list(zip(g["timestamp"], g["lat"], g["lon"], strict=True))
    double = SageDouble(args.root, user=args.user, token=args.token, gps=gps, latency=args.latency,
                        fault_rate=args.fault_rate, port=args.port, lifetime_s=args.lifetime or None)
    print(f"SAGE double on {double.url}: {len(double.records)} records, {len(double.files)} files\n"
          f"  --endpoint {double.url}/api/v1/query --storage-url {double.url} "
          f"--manifest-url {double.url}/manifests", flush=True)
    double.start()
    try:
        while double.server.socket.fileno() != -1:
            time.sleep(0.5)
    except KeyboardInterrupt:
        double.stop()


if __name__ == "__main__":
    main()
