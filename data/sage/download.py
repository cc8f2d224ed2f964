"""Download SAGE Mobotix scans: query the data API, plan, then fetch in parallel with resume.

    python -m data.sage.download --vsn W056 --start 2023-03-10 --end 2023-03-24 --out RAW
    python -m data.sage.download --from-query saved.csv --out RAW --dry-run
    python -m data.sage.download --vsn W056 --start 2023-03-10 --end 2023-03-11 --out RAW --rows sky,horizon

Fetches the presets of --rows (default `sky`: 1, 5, …, 29; `horizon`: 2, 6, …, 30; data.formats.row_presets),
every numbered preset with --all-positions.

Writes `RAW/<VSN>/rgb/` and `RAW/<VSN>/thermal/` as `{ts_ns}-{filename}`, the query results under
`RAW/<VSN>/sage_meta/`, `RAW/plan.csv` and `RAW/failed_urls.csv` (url, status, reason). Safe to re-run: saved
query days are not asked again, complete files are skipped, partial ones resume. Credentials (needed for
protected files): SAGE_USER and SAGE_TOKEN, else the `~/.netrc` entry for the storage host; they are sent
only to the storage host (a netrc `default` entry only to the SAGE storage host), and only over TLS or
directly to a loopback test storage: never in plain http through a proxy. Proxies: `https_proxy`,
`http_proxy` and `no_proxy` apply to the query and to the files. A file is kept only when complete: its size
matches what the server announced and its content looks like a JPEG / thermal CSV; and never when it is
larger than --max-file-mb. Every per-file problem (including names longer than 255 bytes or holding a
control character, refused when planning) is a row of failed_urls.csv, rewritten by every run; the run goes
on. Exit code 0 = complete, 1 = some files missing (see failed_urls.csv), 2 = bad arguments (credentials
with a remote plain-http storage URL too) or an unusable ~/.netrc, 3 = the storage refused the credentials
(or never got them: see the note). `--end` is exclusive; times
without a zone are UTC. Try it offline against the test double: `python -m tests.sage_double --help`.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
from tqdm import tqdm

from data.formats import parse_rows
from data.sage.credentials import CredentialsError, find_credentials
from data.sage.fetch import AuthError, Fetcher, Result, origin_of
from data.sage.query import QUERY_ENDPOINT, STORAGE_URL, QueryError, load_query_file, plan_downloads, query_uploads
from data.sage.registry import to_utc
from sagecast_common.cli import UserError, make_parser
from sagecast_common.runio import atomic_path

AUTH_HELP = ("set SAGE_USER (your SAGE portal user name) and SAGE_TOKEN (your portal access token) in the "
             "environment, or add `machine {host} login USER password TOKEN` to ~/.netrc")


def parse_args(argv=None) -> argparse.Namespace:
    ap = make_parser("sagecast-download", __doc__)
    ap.add_argument("--vsn", action="append", help="node, e.g. W056 (repeatable; filters --from-query)")
    ap.add_argument("--start", help="UTC start, e.g. 2023-03-10 or 2023-03-10T12:00")
    ap.add_argument("--end", help="UTC end (exclusive)")
    ap.add_argument("--out", required=True, type=Path, help="RAW directory")
    ap.add_argument("--plugin", default=".*mobotix-scan.*", help="plugin regex (default %(default)s)")
    ap.add_argument("--endpoint", default=QUERY_ENDPOINT, help="query API (default %(default)s)")
    ap.add_argument("--storage-url", default=STORAGE_URL,
                    help="fetch storage URLs from this origin instead (e.g. the test double); "
                         "credentials go to this origin only (default %(default)s)")
    ap.add_argument("--rows", default="sky", help="preset rows to fetch, comma list of sky, horizon")
    ap.add_argument("--all-positions", action="store_true", help="every position, whatever its row")
    ap.add_argument("--keep-unpositioned", action="store_true", help="also files with no known position")
    ap.add_argument("--workers", type=int, default=8, help="parallel downloads (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per connect/read (default %(default)s)")
    ap.add_argument("--retries", type=int, default=5, help="retries per file (default %(default)s)")
    ap.add_argument("--backoff", type=float, default=1.0, help="first retry delay, doubled each time (s)")
    ap.add_argument("--deadline", type=float, default=1800.0,
                    help="give a file up after this many seconds in all, retries included (default %(default)s)")
    ap.add_argument("--max-file-mb", type=float, default=1024.0,
                    help="refuse a file larger than this (MiB; SAGE files are tens of MB): an announced larger "
                         "length is never fetched, a body that streams past it is cut off and not kept "
                         "(default %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="query and plan only")
    ap.add_argument("--from-query", type=Path, help="plan from a saved query result (CSV or NDJSON)")
    args = ap.parse_args(argv)
    if not args.from_query and not (args.vsn and args.start and args.end):
        ap.error("give --vsn, --start and --end (or --from-query FILE)")
    try:
        args.rows = parse_rows(args.rows)
    except ValueError as e:
        ap.error(str(e))
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.retries < 0:
        ap.error(f"--retries must be >= 0, got {args.retries}")
    for name in ("timeout", "deadline", "max_file_mb"):
        if not getattr(args, name) > 0:  # also refuses nan
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not args.backoff >= 0:
        ap.error(f"--backoff must be >= 0, got {args.backoff}")
    return args


def storage_urls(plan: pd.DataFrame, storage_url: str) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Map each record URL onto --storage-url; URLs on any other host are rejected, never fetched."""
    allowed = {origin_of(STORAGE_URL), origin_of(storage_url)}
    base = storage_url.rstrip("/")
    keep, rejected = [], []
    for url in plan["url"]:
        ok = origin_of(url) in allowed
        keep.append(ok)
        if not ok:
            rejected.append((url, f"not on the storage host {urlsplit(storage_url).hostname}"))
    plan = plan[pd.Series(keep, index=plan.index, dtype=bool)].copy()
    plan["fetch_url"] = [base + urlsplit(u).path for u in plan["url"]]
    return plan, rejected


def summarize(plan: pd.DataFrame, skipped, rejected) -> str:
    lines = [f"plan: {len(plan)} files to fetch"]
    if len(plan):
        table = pd.crosstab(plan["vsn"], plan["kind"])
        lines += ["  " + ln for ln in table.to_string().splitlines()]
    for reason, n in sorted(skipped.items()):
        lines.append(f"  skipped {n:6d}  {reason}")
    if rejected:
        lines.append(f"  rejected {len(rejected):5d}  unsafe or foreign URLs (listed in failed_urls.csv)")
    return "\n".join(lines)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def download(plan: pd.DataFrame, raw: Path, fetcher: Fetcher, workers: int) -> tuple[list, bool]:
    """Fetch every planned file; returns (results, auth_refused)."""
    results, auth_refused = [], False
    with tqdm(total=len(plan), unit="file", desc="files") as files, \
            tqdm(unit="B", unit_scale=True, desc="bytes", position=1) as nbytes:
        fetcher.on_bytes = nbytes.update
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(fetcher.fetch, row.fetch_url, raw / row.dest, raw / row.vsn / ".partial"):
                       row for row in plan.itertuples()}
            for fut in as_completed(futures):
                row = futures[fut]
                try:
                    res = fut.result()
                    res.url = row.url
                except AuthError:
                    auth_refused = True
                    res = Result(row.url, False, 401, "storage answered 401 Unauthorized")
                except Exception as e:  # one file must never end the run: it is listed instead
                    res = Result(row.url, False, None, f"{type(e).__name__}: {e}")
                results.append(res)
                files.update()
    return results, auth_refused


def main(argv=None) -> int:
    args = parse_args(argv)
    raw: Path = args.out
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "failed_urls.csv").unlink(missing_ok=True)  # a killed run must not leave the last run's list
    try:
        if args.from_query:
            records = load_query_file(args.from_query)
        else:
            start, end = to_utc(args.start), to_utc(args.end)
            frames = [query_uploads(v.upper(), start, end, raw=raw, plugin=args.plugin, endpoint=args.endpoint)
                      for v in args.vsn]
            records = pd.concat(frames, ignore_index=True)
    except QueryError as e:
        write_csv(pd.DataFrame([{"url": args.endpoint, "status": "", "reason": str(e)}]), raw / "failed_urls.csv")
        print(f"error: {e}", file=sys.stderr)
        return 1
    plan, skipped, rejected = plan_downloads(records, rows=args.rows, all_positions=args.all_positions,
                                             keep_unpositioned=args.keep_unpositioned, vsns=args.vsn)
    plan, foreign = storage_urls(plan, args.storage_url)
    rejected += foreign
    print(summarize(plan, skipped, rejected), flush=True)
    write_csv(plan.drop(columns="fetch_url"), raw / "plan.csv")
    failures = [{"url": u, "status": "", "reason": r} for u, r in rejected]
    if args.dry_run:
        write_csv(pd.DataFrame(failures, columns=["url", "status", "reason"]), raw / "failed_urls.csv")
        print(f"dry run: wrote {raw / 'plan.csv'}")
        return 0
    try:
        creds = find_credentials(args.storage_url)
    except CredentialsError as e:
        write_csv(pd.DataFrame(failures, columns=["url", "status", "reason"]), raw / "failed_urls.csv")
        print(f"error: {e}", file=sys.stderr)
        return 2
    host = urlsplit(args.storage_url).hostname
    if creds is None:
        print(f"note: no credentials found; protected files will fail ({AUTH_HELP.format(host=host)})")
    try:
        fetcher = Fetcher(storage_url=args.storage_url, credentials=creds, timeout=args.timeout,
                          retries=args.retries, backoff=args.backoff, deadline=args.deadline,
                          max_bytes=int(args.max_file_mb * 2**20))
    except UserError as e:
        write_csv(pd.DataFrame(failures, columns=["url", "status", "reason"]), raw / "failed_urls.csv")
        print(f"error: {e}", file=sys.stderr)
        return 2
    if fetcher.withheld():
        print(f"note: the credentials are not sent: {args.storage_url} is reached in plain http through the "
              f"proxy from http_proxy, which would read them; protected files will fail (add {host} to "
              f"no_proxy, or use an https storage URL)")
    results, auth_refused = download(plan, raw, fetcher, args.workers)
    failures += [{"url": r.url, "status": r.status or "", "reason": r.reason} for r in results if not r.ok]
    write_csv(pd.DataFrame(failures, columns=["url", "status", "reason"]), raw / "failed_urls.csv")
    for vsn in plan["vsn"].unique():
        partial = raw / vsn / ".partial"
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()
    done = sum(r.ok and not r.skipped for r in results)
    print(f"downloaded {done}, already complete {sum(r.skipped for r in results)}, failed {len(failures)} "
          f"(listed in {raw / 'failed_urls.csv'})")
    if auth_refused:
        given = ("the credentials were not sent through the plain-http proxy" if fetcher.withheld() else
                 f"the credentials from {creds.source} were refused" if creds else "no credentials were found")
        print(f"error: the storage answered 401 Unauthorized ({given}): {AUTH_HELP.format(host=host)}",
              file=sys.stderr)
        return 3
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
