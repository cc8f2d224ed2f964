"""`--source subscribe`: the scanner's `upload` messages → scans, with the frames fetched from SAGE storage.

Each message names one stored file (value = its storage URL, meta filename and vsn, timestamp = the
capture's time). Messages are grouped into scans as scans.ScanGrouper does (a gap > scan_gap_s between
captures, or another node, ends a scan); the open scan is also closed when no message has come for
`flush_after_s` seconds, since the next loop starts minutes later. Files are fetched over HTTPS from the URL's
path on `storage_url` with the credentials sagecast-download uses: SAGE_USER + SAGE_TOKEN, else the
`~/.netrc` entry for the storage host (a netrc `default` entry only for the real SAGE storage host). A file
that cannot be fetched is left out, so its preset is published as skipped; each scan's files are deleted once
the next scan is asked for.
"""

from __future__ import annotations

import base64
import netrc
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge_runtime.scans import Scan, ScanGrouper

SAGE_STORAGE = "https://storage.sagecontinuum.org"
FETCH_TIMEOUT_S = 60.0


def auth_header(storage_url: str) -> str | None:
    """HTTP Basic from SAGE_USER/SAGE_TOKEN or ~/.netrc (data.sage.credentials' rules); None without any."""
    user, token = os.environ.get("SAGE_USER"), os.environ.get("SAGE_TOKEN")
    if not (user and token):
        host = (urlsplit(storage_url).hostname or "").lower()
        try:
            parsed = netrc.netrc(os.path.expanduser("~/.netrc"))
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            return None
        entry = parsed.hosts.get(host) or (parsed.hosts.get("default") if host == urlsplit(SAGE_STORAGE).hostname
                                           else None)
        if entry is None:
            return None
        user, token = entry[0], entry[2]
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def fetch(url: str, storage_url: str, auth: str | None, out: Path) -> bool:
    """The file at `url`'s path on `storage_url` → `out`; False (reason on stderr) if it cannot be had."""
    target = storage_url.rstrip("/") + urlsplit(url).path
    request = urllib.request.Request(target, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as resp, open(out, "wb") as f:
            shutil.copyfileobj(resp, f)
        return True
    except OSError as e:  # URLError, HTTPError, timeouts: the preset is then reported missing
        print(f"fetch {target}: {type(e).__name__}: {e}", file=sys.stderr)
        out.unlink(missing_ok=True)
        return False


def subscribed_scans(plugin, gap_s: float, *, storage_url: str = SAGE_STORAGE, flush_after_s: float | None = None,
                     max_scans: int = 0) -> Iterator[Scan]:
    """Scans from `plugin`'s `upload` messages, their files in a temporary folder; ends after `max_scans` (0 =
    never)."""
    plugin.subscribe("upload")
    auth, grouper, n = auth_header(storage_url), ScanGrouper(gap_s), 0
    flush_after_s = gap_s if flush_after_s is None else flush_after_s
    folder = Path(tempfile.mkdtemp(prefix="sagecast-edge-"))
    try:
        while not max_scans or n < max_scans:
            try:
                msg = plugin.get(timeout=flush_after_s)
            except TimeoutError:
                done = grouper.flush()
            else:
                if msg.name != "upload" or "filename" not in msg.meta:
                    continue
                name = f"{msg.timestamp}-{msg.meta['filename']}"
                path = folder / name
                if not fetch(unquote(str(msg.value)), storage_url, auth, path):
                    continue
                done = grouper.add(msg.meta.get("vsn", "").upper(), msg.timestamp, msg.meta["filename"], path)
            if done is not None:
                yield done
                n += 1
                for files in done.files.values():
                    for path in files.values():
                        path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
