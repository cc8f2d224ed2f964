"""A stand-in for SAGE's data API, file storage and manifest service on 127.0.0.1 (tests, offline trials).

    python -m data.synthetic --out /tmp/raw --nodes W056 --start 2023-05-18 --days 1
    python -m tests.sage_double --root /tmp/raw --port 8765 --user me --token secret
    SAGE_USER=me SAGE_TOKEN=secret python -m data.sage.download --vsn W056 --start 2023-05-18 --end 2023-05-19 \
        --out /tmp/got --endpoint http://127.0.0.1:8765/api/v1/query --storage-url http://127.0.0.1:8765

Routes: `POST /api/v1/query` with the real API's rules (body <= 4096 bytes, unknown fields -> 400, `start`
required, bare filter keys, `|` / `*` / exact values, `( ) $ { }` refused, head/tail per series, NDJSON in
no time order); `GET|HEAD /api/v1/data/...` behind HTTP Basic (401 without; any user unless --user/--token),
single Range requests; `GET /manifests/<VSN>/`. Upload records come from `ROOT/<VSN>/sage_meta/*.csv` (their
storage URLs keep the real host: point the downloader's --storage-url here); the files from
`ROOT/<VSN>/rgb|thermal/`; `sys.gps.lat|lon` records from a GPS track (--gps-csv vsn,timestamp,lat,lon).
Faults: `fail(path, kind, times)` or `fault_rate` over storage GETs; kinds: 500, slow (answer after
`slow_s`), drop (connection closed mid-body), bad_length (Content-Length too large), 401, 403, 404.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pandas as pd

from data.sage.query import load_query_csv
from data.sage.registry import to_utc

QUERY_FIELDS = {"start", "end", "head", "tail", "filter", "bucket", "experimental_func", "experimental_window"}
FAULTS = ("500", "slow", "drop", "bad_length", "401", "403", "404")


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


class QueryRejected(ValueError):
    pass


class SageDouble:
    def __init__(self, root=None, *, user=None, token=None, gps=None, manifest=None, latency=0.0,
                 slow_s=5.0, trickle_s=0.0, ignore_range=False, fault_rate=0.0, fault_kinds=("500", "drop"),
                 seed=0, port=0, lifetime_s: float | None = 300.0):
        self.root = Path(root) if root else None
        self.user, self.token = user, token
        self.latency, self.slow_s, self.trickle_s, self.ignore_range = latency, slow_s, trickle_s, ignore_range
        self.fault_rate, self.fault_kinds, self.rng = fault_rate, fault_kinds, random.Random(seed)
        self.records, self.files, self.redirects = [], {}, {}
        self.manifest, self.given_manifest = dict(manifest or {}), set(manifest or {})
        self.faults: dict[str, deque] = defaultdict(deque)
        self.log: list[dict] = []  # one entry per request; never the Authorization value
        self.lock = threading.Lock()
        if self.root:
            self._load_root()
        for vsn, track in (gps or {}).items():
            self.add_gps(vsn, track)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
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
                        if path.is_file():
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

    def fail(self, url_path: str, kind: str, times: int = 1) -> None:
        assert kind in FAULTS, kind
        self.faults[url_path].extend([kind] * times)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head=False) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _note(self, status: int) -> None:
        d = self.server.double
        with d.lock:
            d.log.append({"method": self.command, "path": urlsplit(self.path).path, "status": status,
                          "range": self.headers.get("Range"), "auth": "Authorization" in self.headers})

    def do_POST(self) -> None:
        d = self.server.double
        time.sleep(d.latency)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path.rstrip("/") != "/api/v1/query":
            return self._send(404, b"not found")
        if fault := self._fault(urlsplit(self.path).path, storage=False):
            return self._fail(fault, b"")
        try:
            rows = d.run_query(body)
        except QueryRejected as e:
            self._note(400)
            return self._send(400, json.dumps({"error": str(e)}).encode())
        self._note(200)
        self._send(200, "".join(json.dumps(r) + "\n" for r in rows).encode(),
                   {"Content-Type": "application/x-ndjson"})

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head=False) -> None:
        d = self.server.double
        time.sleep(d.latency)
        path = unquote(urlsplit(self.path).path)
        if m := re.fullmatch(r"/manifests/([A-Za-z0-9]+)/?", path):
            info = d.manifest.get(m[1].upper())
            return self._send(200 if info else 404, json.dumps(info or {"error": "no such node"}).encode())
        if not path.startswith("/api/v1/data/"):
            return self._send(404, b"not found")
        if not self._authorized():
            self._note(401)
            return self._send(401, b"unauthorized", {"WWW-Authenticate": 'Basic realm="sage"'}, head=head)
        if path in d.redirects:
            self._note(302)
            return self._send(302, b"", {"Location": d.redirects[path]}, head=head)
        if not head and (fault := self._fault(path, storage=True)):
            return self._fail(fault, self._content(path) or b"")
        data = self._content(path)
        if data is None:
            self._note(404)
            return self._send(404, b"not found", head=head)
        status, start, headers = 200, 0, {"Accept-Ranges": "bytes"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if rng and not d.ignore_range and not head:
            start, stop = int(rng[1]), int(rng[2]) + 1 if rng[2] else len(data)
            if start >= len(data):
                self._note(416)
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{min(stop, len(data)) - 1}/{len(data)}"
            data = data[start:stop]
        self._note(status)
        self.send_response(status)
        for k, v in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        step = 8192 if d.trickle_s else len(data) or 1
        for i in range(0, len(data), step):
            self.wfile.write(data[i:i + step])
            time.sleep(d.trickle_s)

    def _content(self, path: str) -> bytes | None:
        src = self.server.double.files.get(path)
        return src.read_bytes() if isinstance(src, Path) else src

    def _authorized(self) -> bool:
        d = self.server.double
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Basic "):
            return False
        user, _, token = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        return d.user is None or (user == d.user and token == d.token)

    def _fault(self, path: str, *, storage: bool) -> str | None:
        d = self.server.double
        with d.lock:
            if d.faults.get(path):
                return d.faults[path].popleft()
            if storage and d.fault_rate and d.rng.random() < d.fault_rate:
                return d.rng.choice(d.fault_kinds)
        return None

    def _fail(self, kind: str, data: bytes) -> None:
        self._note(-1 if kind in ("slow", "drop", "bad_length") else int(kind))
        if kind == "slow":
            time.sleep(self.server.double.slow_s)
            self.close_connection = True
            return self._send(503, b"too late")
        if kind in ("drop", "bad_length"):
            self.send_response(200)
            extra = 1000 if kind == "bad_length" else 0
            self.send_header("Content-Length", str(len(data) + extra))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2] if kind == "drop" else data)
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(int(kind), f"injected {kind}".encode())


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
