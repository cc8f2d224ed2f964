"""Authenticated, resumable, parallel HTTP download of SAGE storage files (the engine of `data.sage.download`).

Standard library only (http.client): every request has a timeout, redirects are followed by hand so the
Authorization header goes to the storage origin and nowhere else, and the credentials never appear in a
repr, a log line or a file. Proxies come from the environment as for any urllib program (`https_proxy`,
`http_proxy`, `no_proxy`): plain http through the proxy, https through a CONNECT tunnel. Credentials travel
only where the connection itself is safe: over TLS (direct or tunnelled), or in plain http to a loopback
peer reached directly; a plain-http request through a proxy never carries them (the proxy would read them).
No file grows past `max_bytes`: an announced length above it is refused before anything is written, and a
body that streams past it is cut off and its partial file deleted (listed as failed, not kept). A file streams into
`<VSN>/.partial/` and is renamed into place only once it is complete: its size matches what the server
announced (when it did, validly) and its content looks like its kind (data.formats.download_problem: an
HTML error page served as 200 is refused; without an announced size, a file that looks cut short is
resumed; a stored file that is itself cut short, at the size the server announces, is kept as it is and
left to data.prepare to skip). An interrupted file resumes with an HTTP Range request. 429 and
5xx are retried with backoff (HEAD like GET), honouring `Retry-After` up to `max_backoff`; each file has a
total deadline, checked between reads.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import random
import re
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from data.formats import download_problem
from data.sage.credentials import Credentials
from sagecast_common.cli import UserError

CHUNK = 1 << 16
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class AuthError(RuntimeError):
    """The storage refused the credentials (HTTP 401): stop everything, retrying cannot help."""


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status, self.retry_after = status, retry_after


class _Fail(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class _GaveUp(_Fail):
    """Retries or the deadline ran out."""


def origin_of(url: str) -> tuple[str, str, int]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80)


def _int_header(resp: http.client.HTTPResponse, name: str) -> int | None:
    value = (resp.getheader(name) or "").strip()
    return int(value) if value.isdigit() else None  # absent or malformed: unknown, never a crash


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), None if absent or garbled."""
    value = (resp.getheader("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _proxy_for(origin: tuple[str, str, int]) -> tuple[str, int, dict] | None:
    """(host, port, Proxy-Authorization headers) of the environment's proxy for `origin`, None if direct."""
    proxy = urllib.request.getproxies().get(origin[0])
    if not proxy or urllib.request.proxy_bypass(origin[1]):
        return None
    p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers = {}
    if p.username:
        auth = Credentials(unquote(p.username), unquote(p.password or ""), "proxy URL")
        headers["Proxy-Authorization"] = auth.header()
    return p.hostname, p.port or 80, headers


@dataclass
class Result:
    url: str
    ok: bool
    status: int | None = None
    reason: str = ""
    nbytes: int = 0
    skipped: bool = False


class Fetcher:
    """Download single files to `dest`, staging them under `partial_dir`; safe to call from many threads."""

    def __init__(self, *, storage_url: str, credentials: Credentials | None, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0, deadline: float = 1800.0,
                 max_bytes: int = 1 << 30, on_bytes=None):
        self.storage_origin = origin_of(storage_url)
        if credentials and self.storage_origin[0] != "https" and self.storage_origin[1] not in LOOPBACK:
            raise UserError(f"refusing to send credentials over plain http to {self.storage_origin[1]}: "
                            f"use an https:// --storage-url")
        self.credentials = credentials
        self.timeout, self.retries, self.deadline, self.max_bytes = timeout, retries, deadline, max_bytes
        self.backoff, self.max_backoff = backoff, max_backoff
        self.on_bytes = on_bytes or (lambda n: None)
        self.stop = threading.Event()  # set on a 401: the other workers give up at their next step
        self._local = threading.local()

    # --- one HTTP exchange ------------------------------------------------------------------------
    def _conn(self, origin) -> tuple[http.client.HTTPConnection, dict, bool]:
        """(connection, extra headers, whether to send the absolute URL) for `origin`, kept per thread."""
        conns = self._local.__dict__.setdefault("conns", {})
        if origin not in conns:
            scheme, host, port = origin
            proxy = _proxy_for(origin)
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            if proxy is None:
                conns[origin] = cls(host, port, timeout=self.timeout), {}, False
            elif scheme == "https":  # CONNECT tunnel: the proxy sees neither the path nor our headers
                conn = cls(proxy[0], proxy[1], timeout=self.timeout)
                conn.set_tunnel(host, port, headers=proxy[2])
                conns[origin] = conn, {}, False
            else:
                conns[origin] = http.client.HTTPConnection(proxy[0], proxy[1], timeout=self.timeout), proxy[2], True
        return conns[origin]

    def _drop(self, origin) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(origin, None)
        if conn is not None:
            conn[0].close()

    def withheld(self) -> bool:
        """Credentials exist but the storage is reached in plain http through a proxy: they are not sent."""
        return self.credentials is not None and not self._sends_credentials(self.storage_origin)

    def _sends_credentials(self, origin) -> bool:
        """The storage origin over TLS, or over plain http to a loopback peer with no proxy in between."""
        if not self.credentials or origin != self.storage_origin:
            return False
        return origin[0] == "https" or (origin[1] in LOOPBACK and _proxy_for(origin) is None)

    def _request(self, method: str, url: str, headers: dict) -> http.client.HTTPResponse:
        """One request, following up to 5 redirects; Authorization only as `_sends_credentials` allows."""
        for _ in range(6):
            origin, parts = origin_of(url), urlsplit(url)
            conn, extra, absolute = self._conn(origin)
            sent = {**headers, **extra}
            if self._sends_credentials(origin):
                sent["Authorization"] = self.credentials.header()
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request(method, url if absolute else target, headers=sent)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self._drop(origin)
                raise _Retry(f"{type(e).__name__}: {e}") from None
            resp.origin = origin
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.read()
                url = urljoin(url, location)
                continue
            return resp
        raise _Fail("too many redirects")

    def _check(self, resp: http.client.HTTPResponse, url: str) -> None:
        if resp.status == 401:
            self.stop.set()
            raise AuthError(url)
        if resp.status >= 500 or resp.status == 429:
            resp.read()
            raise _Retry(f"HTTP {resp.status} {resp.reason}", resp.status, _retry_after(resp))

    def _attempts(self, op, t_end: float):
        """op() with up to `retries` retries on _Retry, backing off (jittered, or as Retry-After asks)."""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise _Fail("not attempted: stopped after the storage answered 401")
            try:
                return op()
            except _Retry as e:
                last = e
            if attempt == self.retries:
                break
            wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)  # jitter
            if last.retry_after is not None:
                wait = max(wait, min(last.retry_after, self.max_backoff))
            if time.monotonic() + wait > t_end:
                raise _GaveUp(f"deadline of {self.deadline:g} s reached after {attempt + 1} attempts: {last}",
                              last.status)
            time.sleep(wait)
        raise _GaveUp(f"gave up after {self.retries + 1} attempts: {last}", last.status)

    # --- one file -----------------------------------------------------------------------------------
    def fetch(self, url: str, dest: Path, partial_dir: Path) -> Result:
        """Never raises for a per-file problem (only AuthError, which stops the run): the Result says why."""
        part = partial_dir / dest.name
        t_end = time.monotonic() + self.deadline
        try:
            if dest.exists():
                try:
                    complete = self._attempts(lambda: self._complete(url, dest), t_end)
                except _GaveUp:  # the storage cannot tell us its size now: the file's own format decides
                    complete = download_problem(dest) is None
                if complete:
                    return Result(url, True, None, "already complete", skipped=True)
            return self._attempts(lambda: self._get(url, dest, part, t_end), t_end)
        except _Fail as e:
            return Result(url, False, e.status, str(e))
        except OSError as e:  # our side: disk full, permissions, a name the file system refuses...
            return Result(url, False, None, f"{type(e).__name__}: {e}")

    def _complete(self, url: str, dest: Path) -> bool:
        """In place and complete: no other size announced by the server, and the content looks right."""
        resp = self._request("HEAD", url, {})
        self._check(resp, url)
        resp.read()
        length, problem = _int_header(resp, "Content-Length"), download_problem(dest)
        if resp.status == 200 and length is not None:  # a stored file that is itself cut short stays as it is
            return length == dest.stat().st_size and (problem is None or problem[0] == "truncated")
        return problem is None

    def _too_big(self, resp, part: Path, what: str) -> _Fail:
        """Hang up (the rest of the body is never read), delete the partial file, say why."""
        self._drop(resp.origin)
        part.unlink(missing_ok=True)
        return _Fail(f"{what}, over the limit of {self.max_bytes} bytes (--max-file-mb): not kept", resp.status)

    def _get(self, url: str, dest: Path, part: Path, t_end: float) -> Result:
        offset = part.stat().st_size if part.exists() else 0
        if offset > self.max_bytes:  # left by a run with a larger cap
            part.unlink()
            offset = 0
        resp = self._request("GET", url, {"Range": f"bytes={offset}-"} if offset else {})
        self._check(resp, url)
        if resp.status == 416 and offset:
            resp.read()
            part.unlink()
            raise _Retry("partial file longer than the remote file; restarting", 416)
        if resp.status not in (200, 206):
            resp.read()
            raise _Fail(f"HTTP {resp.status} {resp.reason}", resp.status)
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range") or "")
            if not m or int(m[1]) != offset:
                resp.read()
                part.unlink()
                raise _Retry("server answered another range than asked; restarting", 206)
            total = int(m[3]) if m[3] != "*" else None
            mode = "ab"
        else:  # 200: a fresh download, or a server that ignores Range (start over)
            total = _int_header(resp, "Content-Length")
            mode, offset = "wb", 0
        if total is not None and total > self.max_bytes:
            raise self._too_big(resp, part, f"the server announces {total} bytes")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(part, mode) as f:
                while chunk := resp.read1(CHUNK):  # read1: returns what arrived, so the deadline is checked
                    if f.tell() + len(chunk) > self.max_bytes:
                        raise self._too_big(resp, part, f"the body goes on past {f.tell() + len(chunk)} bytes")
                    f.write(chunk)
                    self.on_bytes(len(chunk))
                    if time.monotonic() > t_end and (total is None or f.tell() < total):
                        self._drop(resp.origin)
                        raise _GaveUp(f"deadline of {self.deadline:g} s reached mid-body "
                                      f"({f.tell()} bytes kept in .partial/ for the next run)", resp.status)
            resp.read()  # read1 leaves a fully read body open: this ends the exchange, so the connection is reusable
        except (ConnectionError, TimeoutError, ssl.SSLError, http.client.HTTPException) as e:
            self._drop(resp.origin)
            raise _Retry(f"connection lost mid-body ({type(e).__name__})") from None
        size = part.stat().st_size
        if total is not None and size != total:
            self._drop(resp.origin)
            if size > total:
                part.unlink()
            raise _Retry(f"got {size} of {total} bytes (connection dropped or wrong Content-Length)", resp.status)
        problem = download_problem(part)
        if problem and problem[0] == "truncated" and total is None:  # no size announced: resume what arrived
            self._drop(resp.origin)
            raise _Retry(f"{problem[1]}: resuming", resp.status)
        if problem and problem[0] == "wrong":  # e.g. an HTML error page served as 200
            part.unlink()
            raise _Fail(f"served content is not the file: {problem[1]}", resp.status)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        return Result(url, True, resp.status, "downloaded", size - offset)
