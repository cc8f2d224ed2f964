"""The HTTP side of the SAGE double (tests/sage_double.py): query, storage with faults, manifests.

The server object carries the double as `server.double`; this handler only reads its content, faults and
settings, and notes each request in `double.log` (never the Authorization value).
"""

from __future__ import annotations

import base64
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit


class QueryRejected(ValueError):
    """A query the real API answers with 400."""


class Handler(BaseHTTPRequestHandler):
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
        if fault := self._fault("POST", urlsplit(self.path).path, storage=False):
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
        if fault := self._fault(self.command, path, storage=not head):
            return self._fail(fault, self._content(path) or b"", head=head)
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
        if d.public:
            return True
        if not auth.startswith("Basic "):
            return False
        user, _, token = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        return d.user is None or (user == d.user and token == d.token)

    def _fault(self, method: str, path: str, *, storage: bool) -> str | None:
        d = self.server.double
        with d.lock:
            if d.faults.get((method, path)):
                return d.faults[method, path].popleft()
            if storage and d.fault_rate and d.rng.random() < d.fault_rate:
                return d.rng.choice(d.fault_kinds)
        return None

    def _fail(self, kind: str, data: bytes, head: bool = False) -> None:
        self._note(int(kind) if kind.isdigit() else -1)
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
        if kind in ("huge", "endless"):  # until the client hangs up (or a safety stop at 1 GB)
            self.send_response(200)
            self.send_header(*(("Content-Length", str(10**11)) if kind == "huge" else ("Connection", "close")))
            self.end_headers()
            block = (data or b"x") * max(1, 65536 // max(1, len(data)))
            self.close_connection = True
            try:
                while self.server.double.streamed < 2**30:
                    self.wfile.write(block)
                    with self.server.double.lock:
                        self.server.double.streamed += len(block)
            except OSError:
                pass
            return
        if kind in ("bad_header", "no_length"):  # the body ends when the connection closes
            self.send_response(200)
            if kind == "bad_header":
                self.send_header("Content-Length", f"{len(data)}abc")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data if kind == "bad_header" else data[:len(data) // 2])
            self.close_connection = True
            return
        if kind == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Service busy, try later</body></html>",
                              {"Content-Type": "text/html"}, head=head)
        extra = {"Retry-After": self.server.double.retry_after} if kind == "429" else {}
        self._send(int(kind), f"injected {kind}".encode(), extra, head=head)
