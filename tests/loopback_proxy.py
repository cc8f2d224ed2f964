"""A forwarding HTTP proxy on 127.0.0.1 for tests: absolute-URL requests (what clients send to an http
proxy) are relayed to their origin; `seen` lists (method, url) of every request it carried, `authorized` the
(method, url) of those that came with an Authorization header (which a proxy can read)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "proxy-connection", "proxy-authorization", "keep-alive", "transfer-encoding", "host"}


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _relay(self) -> None:
        self.server.seen.append((self.command, self.path))
        if "Authorization" in self.headers:
            self.server.authorized.append((self.command, self.path))
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        upstream.request(self.command, parts.path + (f"?{parts.query}" if parts.query else ""), body=body or None,
                         headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        upstream.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _relay


class LoopbackProxy:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
        self.server.daemon_threads = True
        self.server.seen, self.server.authorized = [], []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def seen(self) -> list[tuple[str, str]]:
        return self.server.seen

    @property
    def authorized(self) -> list[tuple[str, str]]:
        return self.server.authorized

    def __enter__(self) -> LoopbackProxy:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
