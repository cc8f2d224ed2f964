"""Authenticated, resumable, parallel HTTP download of SAGE storage files (the engine of `data.download`).

Standard library only (http.client): every request has a timeout, redirects are followed by hand so the
Authorization header goes to the storage origin and nowhere else, and the credentials never appear in a
repr, a log line or a file. A file streams into `<VSN>/.partial/` and is renamed into place only once its
size matches what the server announced; an interrupted file resumes with an HTTP Range request.
"""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

CHUNK = 1 << 16
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class AuthError(RuntimeError):
    """The storage refused the credentials (HTTP 401): stop everything, retrying cannot help."""


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


class _Fail(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


def origin_of(url: str) -> tuple[str, str, int]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80)


class Credentials:
    """HTTP Basic credentials for one storage origin. The secret lives only in `header()`."""

    def __init__(self, user: str, token: str, source: str):
        self._header = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.source = source

    def header(self) -> str:
        return self._header

    def __repr__(self) -> str:
        return f"Credentials(from {self.source}, hidden)"


def find_credentials(storage_url: str) -> Credentials | None:
    """SAGE_USER + SAGE_TOKEN from the environment, else the `~/.netrc` entry for the storage host."""
    user, token = os.environ.get("SAGE_USER"), os.environ.get("SAGE_TOKEN")
    if user and token:
        return Credentials(user, token, "SAGE_USER/SAGE_TOKEN")
    host = urlsplit(storage_url).hostname or ""
    try:
        entry = netrc.netrc().authenticators(host)
    except FileNotFoundError:
        return None
    except netrc.NetrcParseError as e:  # its message can quote a token: give only the place
        raise SystemExit(f"~/.netrc could not be parsed (line {e.lineno}); "
                         "fix it or set SAGE_USER/SAGE_TOKEN") from None
    if entry and entry[0] and entry[2]:
        return Credentials(entry[0], entry[2], f"~/.netrc ({host})")
    return None


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
                 retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0, on_bytes=None):
        self.storage_origin = origin_of(storage_url)
        if credentials and self.storage_origin[0] != "https" and self.storage_origin[1] not in LOOPBACK:
            raise SystemExit(f"refusing to send credentials over plain http to {self.storage_origin[1]}")
        self.credentials = credentials
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.on_bytes = on_bytes or (lambda n: None)
        self.stop = threading.Event()  # set on a 401: the other workers give up at their next step
        self._local = threading.local()

    # --- one HTTP exchange ------------------------------------------------------------------------
    def _conn(self, origin) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        if origin not in conns:
            cls = http.client.HTTPSConnection if origin[0] == "https" else http.client.HTTPConnection
            conns[origin] = cls(origin[1], origin[2], timeout=self.timeout)
        return conns[origin]

    def _drop(self, origin) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(origin, None)
        if conn is not None:
            conn.close()

    def _request(self, method: str, url: str, headers: dict) -> http.client.HTTPResponse:
        """One request, following up to 5 redirects; Authorization only for the storage origin."""
        for _ in range(6):
            origin, parts = origin_of(url), urlsplit(url)
            sent = dict(headers)
            if self.credentials and origin == self.storage_origin:
                sent["Authorization"] = self.credentials.header()
            conn = self._conn(origin)
            try:
                conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=sent)
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
            raise _Retry(f"HTTP {resp.status} {resp.reason}", resp.status)

    # --- one file -----------------------------------------------------------------------------------
    def fetch(self, url: str, dest: Path, partial_dir: Path) -> Result:
        part = partial_dir / dest.name
        status, reason = None, ""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                return Result(url, False, None, "not attempted: stopped after the storage answered 401")
            try:
                if dest.exists() and self._complete(url, dest):
                    return Result(url, True, None, "already complete", skipped=True)
                return self._get(url, dest, part)
            except _Retry as e:
                status, reason = e.status, str(e)
            except _Fail as e:
                return Result(url, False, e.status, str(e))
            if attempt < self.retries:
                cap = min(self.max_backoff, self.backoff * 2**attempt)
                time.sleep(cap * (0.5 + random.random() / 2))  # jitter: workers do not retry in lockstep
        return Result(url, False, status, f"gave up after {self.retries + 1} attempts: {reason}")

    def _complete(self, url: str, dest: Path) -> bool:
        """A file already in place counts as complete unless the server announces another size."""
        resp = self._request("HEAD", url, {})
        self._check(resp, url)
        resp.read()
        length = resp.getheader("Content-Length")
        return not (resp.status == 200 and length is not None and int(length) != dest.stat().st_size)

    def _get(self, url: str, dest: Path, part: Path) -> Result:
        offset = part.stat().st_size if part.exists() else 0
        resp = self._request("GET", url, {"Range": f"bytes={offset}-"} if offset else {})
        self._check(resp, url)
        if resp.status == 416 and offset:
            resp.read()
            part.unlink()
            raise _Retry("partial file longer than the remote file; restarting", 416)
        if resp.status not in (200, 206):
            resp.read()
            raise _Fail(f"HTTP {resp.status} {resp.reason}", resp.status)
        length = resp.getheader("Content-Length")
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range") or "")
            if not m or int(m[1]) != offset:
                resp.read()
                part.unlink()
                raise _Retry("server answered another range than asked; restarting", 206)
            total = int(m[3]) if m[3] != "*" else None
            mode = "ab"
        else:  # 200: a fresh download, or a server that ignores Range (start over)
            total = int(length) if length is not None else None
            mode, offset = "wb", 0
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(part, mode) as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    self.on_bytes(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            self._drop(resp.origin)
            raise _Retry(f"connection lost mid-body ({type(e).__name__})") from None
        size = part.stat().st_size
        if total is not None and size != total:
            self._drop(resp.origin)
            if size > total:
                part.unlink()
            raise _Retry(f"got {size} of {total} bytes (connection dropped or wrong Content-Length)", resp.status)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        return Result(url, True, resp.status, "downloaded", size - offset)
