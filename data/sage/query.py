"""Query the SAGE data API in day-sized chunks, load saved query results, and plan which files to fetch.

Used by `python -m data.sage.download` (see there) and `python -m data.sage.nodes`. The query API is public: no
credentials are ever sent to it. Each chunk's result is kept under `RAW/<VSN>/sage_meta/` as provenance and
so that a re-run does not query it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import time
import urllib.error
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pandas as pd
import sage_data_client
from tqdm import tqdm

from data.formats import RGB, THERMAL, parse_mobotix_name, row_presets, split_ts_name
from data.sage.registry import to_utc
from sagecast_common.runio import atomic_path

QUERY_ENDPOINT = "https://data.sagecontinuum.org/api/v1/query"
STORAGE_URL = "https://storage.sagecontinuum.org"
SETTLE = pd.Timedelta(hours=1)  # uploads arrive late; a chunk ending less than this ago is queried again
PLAN_COLUMNS = ["vsn", "kind", "position", "timestamp", "ts_ns", "filename", "url", "dest"]
NAME_MAX = 255  # bytes in one file name on ext4, xfs, GPFS, Lustre
_SAFE_VSN = re.compile(r"^[A-Za-z0-9]+$")


class QueryError(RuntimeError):
    pass


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """sage_data_client calls urlopen without a timeout; the process default is the only handle on it.
    Queries run before any download thread starts, so changing it briefly affects nobody else."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def query(start, end, filt: dict, *, endpoint: str = QUERY_ENDPOINT, timeout: float = 120.0,
          retries: int = 3) -> pd.DataFrame:
    """`sage_data_client.query` with UTC times, a timeout and bounded retries on 5xx / network errors."""
    start, end = to_utc(start), to_utc(end)
    for attempt in range(retries + 1):
        try:
            with _socket_timeout(timeout):
                return sage_data_client.query(start=start, end=end, filter=filt, endpoint=endpoint)
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace").strip()
            if e.code < 500 or attempt == retries:
                raise QueryError(f"query {endpoint} {filt} {start}..{end}: HTTP {e.code} {detail}") from None
        except (OSError, ValueError) as e:  # URLError, timeouts, dropped connections, truncated NDJSON
            if attempt == retries:
                raise QueryError(f"query {endpoint} {filt} {start}..{end} failed: {e}") from None
        time.sleep(min(30.0, 2.0**attempt))
    raise AssertionError("unreachable")


def day_chunks(start: pd.Timestamp, end: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """[start, end) cut at UTC midnights."""
    edges = [start, *pd.date_range(start.floor("D") + pd.Timedelta(days=1), end, freq="D", inclusive="left"),
             end]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if a < b]


def query_uploads(vsn: str, start, end, *, raw: Path, plugin: str, endpoint: str = QUERY_ENDPOINT,
                  progress: bool = True) -> pd.DataFrame:
    """Upload records of one node in [start, end), one query per UTC day, each saved as a CSV under
    `raw/<VSN>/sage_meta/`; a chunk already saved (and settled) is read back instead of queried."""
    key = hashlib.sha1(f"{endpoint}|{plugin}".encode()).hexdigest()[:8]
    now = pd.Timestamp.now(tz="UTC")
    frames = []
    chunks = day_chunks(to_utc(start), to_utc(end))
    for a, b in tqdm(chunks, desc=f"query {vsn}", unit="day", disable=None if progress else True):
        settled = b + SETTLE <= now
        name = f"upload_{a:%Y%m%dT%H%M%SZ}_{b:%Y%m%dT%H%M%SZ}_{key}{'' if settled else '_open'}.csv"
        path = raw / vsn / "sage_meta" / name
        if settled and path.exists():
            frames.append(load_query_csv(path))
            continue
        df = query(a, b, {"vsn": vsn, "name": "upload", "plugin": plugin}, endpoint=endpoint)
        with atomic_path(path) as tmp:
            df.to_csv(tmp)
        frames.append(df)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["timestamp", "name", "value"])


def load_query_csv(path: Path) -> pd.DataFrame:
    """A query result saved with `DataFrame.to_csv` (with or without its unnamed index column)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df.drop(columns=[c for c in df.columns if c == "" or c.startswith("Unnamed:")])
    if len(df):
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    return df


def load_query_file(path: str | Path) -> pd.DataFrame:
    """A saved query result: CSV from `DataFrame.to_csv`, or NDJSON (optionally .gz) as the API returns it."""
    path = Path(path)
    if not path.exists():
        raise QueryError(f"--from-query: {path} does not exist")
    if path.name.endswith((".csv", ".csv.gz")):
        return load_query_csv(path)
    try:
        return sage_data_client.load(path)
    except (ValueError, KeyError) as e:
        raise QueryError(f"--from-query: {path} is neither a CSV nor NDJSON query result ({e!r})") from None


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _unsafe(name: str) -> bool:
    return not name or "/" in name or "\\" in name or "\x00" in name or ".." in name


def plan_downloads(df: pd.DataFrame, *, rows=("sky",), all_positions: bool = False, keep_unpositioned: bool = False,
                   vsns: list[str] | None = None) -> tuple[pd.DataFrame, Counter, list[tuple[str, str]]]:
    """Which uploads to fetch and where to put them: the presets of `rows` (data.formats.row_presets), every
    numbered or named position with `all_positions`.

    Returns (plan with PLAN_COLUMNS, skipped counts by reason, rejected (url, reason) pairs). `dest` is
    relative to RAW: `<VSN>/rgb|thermal/{ts_ns}-{filename}`, ts_ns from the URL (= record time in ns).
    """
    presets = set(row_presets(rows))
    skipped: Counter = Counter()
    rejected: list[tuple[str, str]] = []
    planned, seen_url, seen_dest = [], set(), set()
    wanted = {v.upper() for v in vsns} if vsns else None
    for rec in df.to_dict("records"):
        url = _text(rec.get("value"))
        if _text(rec.get("name")) != "upload":
            skipped["not_upload"] += 1
            continue
        vsn = _text(rec.get("meta.vsn")).upper()
        if wanted is not None and vsn not in wanted:
            skipped["other_node"] += 1
            continue
        if url in seen_url:
            skipped["duplicate"] += 1
            continue
        seen_url.add(url)
        parts = urlsplit(url)
        stored = unquote(PurePosixPath(parts.path).name)
        filename = _text(rec.get("meta.filename")) or (split_ts_name(stored) or (0, stored))[1]
        if parts.scheme not in ("http", "https") or parts.username or parts.password or "\x00" in url \
                or ".." in unquote(parts.path).split("/"):
            rejected.append((url, "unsafe url (not plain http(s), has user info, or a '..' segment)"))
            continue
        if any(ord(c) < 32 or ord(c) == 127 for c in filename + stored):
            rejected.append((url, f"control character in the file name {filename!r}: it would break the "
                                  f"two-line pair files"))
            continue
        if _unsafe(filename) or _unsafe(stored) or not _SAFE_VSN.match(vsn):
            rejected.append((url, f"unsafe file name or node {filename!r} / {vsn!r}: could escape RAW"))
            continue
        name = parse_mobotix_name(filename)
        if name.skip_reason:
            skipped[name.kind] += 1
            continue
        position = name.position
        meta_pos = _text(rec.get("meta.position"))
        if position is None and meta_pos.isdigit():
            position = int(meta_pos)
        if position is None and not keep_unpositioned:
            skipped["unpositioned"] += 1
            continue
        if position is not None and position not in presets and not all_positions:
            skipped["other_row"] += 1
            continue
        ts = to_utc(rec["timestamp"])
        ts_ns = split_ts_name(stored)[0] if split_ts_name(stored) else ts.value
        dest = f"{vsn}/{RGB if name.kind == RGB else THERMAL}/{ts_ns}-{filename}"
        if dest in seen_dest:
            skipped["duplicate"] += 1
            continue
        seen_dest.add(dest)
        if len(PurePosixPath(dest).name.encode()) > NAME_MAX:
            rejected.append((url, f"file name {len(PurePosixPath(dest).name.encode())} bytes long: over the "
                                  f"file-system limit of {NAME_MAX}"))
            continue
        planned.append({"vsn": vsn, "kind": name.kind, "position": "" if position is None else str(position),
                     "timestamp": ts.isoformat(), "ts_ns": ts_ns, "filename": filename, "url": url,
                     "dest": dest})
    plan = pd.DataFrame(planned, columns=PLAN_COLUMNS)
    return plan.sort_values(["vsn", "ts_ns", "kind", "filename"], ignore_index=True), skipped, rejected
