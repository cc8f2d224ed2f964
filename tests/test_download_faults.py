"""data.sage.download against odd servers and hostile names (issue 15 cases 4 and 5, issue 27): every per-file
problem is a row of failed_urls.csv and the run goes on; a file is kept only when complete and within
--max-file-mb; proxies (never carrying credentials in plain http) and ~/.netrc; control characters in names;
numeric options."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from data.formats import rgb_name, thermal_name
from data.sage import download, fetch
from data.sage.credentials import Credentials, find_credentials
from data.sage.query import plan_downloads
from tests.loopback_proxy import LoopbackProxy
from tests.sage_double import SageDouble
from tests.test_download import JOB, REPO, TOKEN, USER, args, assert_same_files, make_raw, storage_gets, upload


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Credentials in the environment, a HOME without a real ~/.netrc, no proxy from the host."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAGE_USER", USER)
    monkeypatch.setenv("SAGE_TOKEN", TOKEN)
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def url_path(p) -> str:
    return f"/api/v1/data/{JOB}/{p.name}"


def failed(out) -> dict[str, str]:
    df = pd.read_csv(out / "failed_urls.csv", dtype=str, keep_default_na=False)
    return {u.rsplit("/", 1)[1]: r for u, r in zip(df["url"], df["reason"], strict=True)}


def test_malformed_content_length_and_cut_short_bodies_end_in_exact_files(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)  # rgb, thermal of presets 1 and 5
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        d.fail(url_path(wanted[0]), "bad_header")  # Content-Length: 30000abc (a ValueError before)
        d.fail(url_path(wanted[1]), "no_length")  # half the JPEG, no length: was saved as complete
        d.fail(url_path(wanted[2]), "no_length")  # half the CSV rows
        assert download.main(args(d, out)) == 0
        assert_same_files(wanted, src, out)
        resumed = {e["path"] for e in storage_gets(d) if e["range"]}
        assert resumed == {url_path(wanted[1]), url_path(wanted[2])}


def test_an_html_page_served_as_200_is_never_a_jpg(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        d.fail(url_path(wanted[0]), "html", times=10)
        assert download.main(args(d, out, "--retries", "1")) == 1
    assert "not a JPEG (starts with b'<!D')" in failed(out)[wanted[0].name]
    assert not (out / wanted[0].relative_to(src)).exists() and not list(out.glob("W056/.partial/*"))


def test_names_over_the_file_system_limit_are_refused_at_planning_and_the_run_goes_on(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    long_name = rgb_name(6144, 2048, 1).replace("_position", "_" + "x" * 240 + "_position")
    ts = pd.Timestamp("2023-05-18T11:00Z")
    plan, _, rejected = plan_downloads(pd.DataFrame([upload(ts, "W056", long_name, 1)]))
    assert plan.empty and "over the file-system limit of 255" in rejected[0][1]
    meta = src / "W056" / "sage_meta" / "uploads.csv"
    pd.concat([pd.read_csv(meta, index_col=0), pd.DataFrame([upload(ts, "W056", long_name, 1)])]).to_csv(meta)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        d.add_file(f"/api/v1/data/{JOB}/{ts.value}-{long_name}", wanted[0].read_bytes())  # the storage has it
        for _ in range(2):  # the rerun neither crashes nor says "connection lost"
            assert download.main(args(d, out)) == 1
            assert_same_files(wanted, src, out)
            assert list(failed(out).values()) == [f"file name {len(long_name) + 20} bytes long: over the "
                                                  "file-system limit of 255"]


def test_every_per_file_error_is_listed_and_failed_urls_is_rewritten_by_every_run(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    blocked = out / wanted[0].relative_to(src)
    blocked.mkdir(parents=True)  # a directory where the file should go: os.replace fails
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out)) == 1
        assert list(failed(out)) == [wanted[0].name] and "IsADirectoryError" in failed(out)[wanted[0].name]
        assert all((out / w.relative_to(src)).read_bytes() == w.read_bytes() for w in wanted[1:])
        blocked.rmdir()
        assert download.main(args(d, out)) == 0 and failed(out) == {}
        assert download.main(args(d, out, "--retries", "1")) == 0 and failed(out) == {}
        # a query the API refuses: the list names it instead of keeping the last run's
        (out / "failed_urls.csv").write_text("url,status,reason\nhttps://old/x.jpg,500,stale\n")
        assert download.main(args(d, out, "--plugin", "bad(plugin)", start="2023-05-17", end="2023-05-18")) == 1
        assert list(failed(out)) == ["query"] and "HTTP 400" in failed(out)["query"]


@pytest.mark.parametrize("retry_after, wait", [("1", 1.0), ("3600", 2.0), ("soon", None), ("http-date", 9.5)])
def test_retry_after_is_honoured_up_to_the_cap(env, monkeypatch, retry_after, wait):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    if retry_after == "http-date":
        retry_after = email.utils.formatdate(time.time() + 10, usegmt=True)  # whole seconds: 9..10 s ahead
    waits = []
    monkeypatch.setattr(fetch.time, "sleep", lambda s: waits.append(s) if s else None)  # no real waiting
    with SageDouble(src, user=USER, token=TOKEN, retry_after=retry_after, lifetime_s=60) as d:
        d.fail(url_path(wanted[0]), "429")
        fetcher = fetch.Fetcher(storage_url=d.url, credentials=Credentials(USER, TOKEN, "test"), backoff=0.01,
                                max_backoff=2.0 if retry_after == "3600" else 60.0)
        res = fetcher.fetch(d.url + url_path(wanted[0]), out / wanted[0].name, out / ".partial")
    assert res.ok and len(waits) == 1
    if wait is None:  # unreadable: the usual jittered backoff
        assert waits[0] <= 0.01
    else:
        assert waits[0] == pytest.approx(wait, abs=1.0 if retry_after not in ("1", "3600") else 1e-9)


def test_head_is_retried_and_a_storage_that_cannot_answer_does_not_fail_a_complete_file(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out)) == 0
        n_gets = len(storage_gets(d))
        d.fail(url_path(wanted[0]), "500", times=2, method="HEAD")  # recovers on the third HEAD
        d.fail(url_path(wanted[1]), "429", times=9, method="HEAD")  # never answers: the JPEG markers decide
        truncated = out / wanted[2].relative_to(src)
        truncated.write_bytes(truncated.read_bytes()[:-500])  # a complete-looking size is not enough
        d.fail(url_path(wanted[2]), "500", times=9, method="HEAD")
        assert download.main(args(d, out, "--retries", "2")) == 0
        heads = [e["path"] for e in d.log if e["method"] == "HEAD"]
        assert heads.count(url_path(wanted[0])) == 3 and heads.count(url_path(wanted[1])) == 3
        assert [e["path"] for e in storage_gets(d)[n_gets:]] == [url_path(wanted[2])]
        assert_same_files(wanted, src, out)


def test_a_slow_drip_server_meets_the_per_file_deadline_and_the_rest_resumes(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1, size=60_000)
    with SageDouble(src, user=USER, token=TOKEN, trickle_s=0.05, lifetime_s=60) as d:  # >= 0.35 s per file
        assert download.main(args(d, out, "--deadline", "0.1", "--workers", "4")) == 1
    reasons = failed(out)
    assert sorted(reasons) == sorted(w.name for w in wanted)
    assert all("deadline of 0.1 s reached mid-body" in r for r in reasons.values())
    assert len(list((out / "W056" / ".partial").iterdir())) == len(wanted)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out)) == 0
        assert len([e for e in storage_gets(d) if e["range"]]) == len(wanted)
    assert_same_files(wanted, src, out)


def write_netrc(env, text: str, mode: int = 0o600):
    path = env / "home" / ".netrc"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_netrc_messages_and_default_entries_only_for_the_sage_storage(env, monkeypatch, capsys):
    src, out = env / "src", env / "out"
    make_raw(src, captures=1)
    monkeypatch.delenv("SAGE_USER")
    monkeypatch.delenv("SAGE_TOKEN")
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        write_netrc(env, f"machine 127.0.0.1 login {USER} password {TOKEN}\n", 0o644)
        assert download.main(args(d, out)) == 2
        err = capsys.readouterr().err
        assert "readable by other users (mode 0644)" in err and "chmod 600" in err and TOKEN not in err
        (env / "home" / ".netrc").unlink()
        (env / "home" / ".netrc").mkdir()
        assert download.main(args(d, out)) == 2
        assert "is not a file" in capsys.readouterr().err
        (env / "home" / ".netrc").rmdir()
        write_netrc(env, f"default login {USER} password {TOKEN}\n")
        assert download.main(args(d, out)) == 3  # the double wanted credentials: the default entry is not its
        assert not any(e["auth"] for e in d.log)
        assert find_credentials(d.url) is None
    sage = find_credentials("https://storage.sagecontinuum.org")
    assert sage is not None and sage.source == "~/.netrc (storage.sagecontinuum.org)"


def test_one_worker_reuses_its_connection_without_wasted_requests(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=2)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out, "--workers", "1")) == 0
        assert len(storage_gets(d)) == len(wanted)  # one GET per file, none lost to a half-closed exchange


def test_a_plain_http_request_through_a_proxy_never_carries_the_credentials(env):
    """In a fresh process with http_proxy set, as on a login node."""
    src = env / "src"
    wanted = make_raw(src, captures=1)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as guarded, \
            SageDouble(src, public=True, lifetime_s=60) as public, LoopbackProxy() as proxy:
        def run(double, dest, **extra):
            cmd = [sys.executable, "-m", "data.sage.download", *args(double, dest)]
            environ = {**os.environ, "http_proxy": proxy.url, **extra}
            return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)

        done = run(guarded, env / "guarded")
        assert done.returncode == 3 and "credentials are not sent" in done.stdout
        assert "not sent through the plain-http proxy" in done.stderr
        assert any(u.startswith(guarded.url + "/api/v1/data/") for _, u in proxy.seen)  # it went by the proxy
        assert proxy.authorized == [] and not any(e["auth"] for e in guarded.log)
        assert run(public, env / "public").returncode == 0  # files a proxy may see still come through it
        assert_same_files(wanted, src, env / "public")
        methods = [(m, u.removeprefix(public.url).split("/")[3]) for m, u in proxy.seen if u.startswith(public.url)]
        assert ("POST", "query") in methods and methods.count(("GET", "data")) == len(wanted)
        assert proxy.authorized == []
        carried = len(proxy.seen)
        assert run(guarded, env / "direct", no_proxy="127.0.0.1").returncode == 0  # no proxy: a loopback peer
        assert len(proxy.seen) == carried and all(e["auth"] for e in storage_gets(guarded)[-len(wanted):])
        assert_same_files(wanted, src, env / "direct")


def test_no_file_grows_past_the_cap_and_an_oversized_partial_is_discarded_and_listed(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)  # about 30 kB each
    stale = out / "W056" / ".partial" / wanted[2].name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\xff\xd8\xff" + b"\0" * 200_000)  # left by a run with a larger cap
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        d.fail(url_path(wanted[0]), "huge")  # once: a retry would get the file
        d.fail(url_path(wanted[1]), "endless")
        assert download.main(args(d, out, "--max-file-mb", "0.1", "--retries", "1")) == 1
        reasons = failed(out)
        assert sorted(reasons) == sorted(w.name for w in wanted[:2])
        cap = int(0.1 * 2**20)
        assert reasons[wanted[0].name] == (f"the server announces 100000000000 bytes, over the limit of {cap} bytes "
                                           "(--max-file-mb): not kept")
        assert reasons[wanted[1].name].startswith("the body goes on past ") and reasons[wanted[1].name].endswith(
            f"bytes, over the limit of {cap} bytes (--max-file-mb): not kept")
        assert d.streamed < 50 * 2**20, "the client hung up instead of reading on"
        assert sum(e["path"] in map(url_path, wanted[:2]) for e in storage_gets(d)) == 2, "not retried"
        assert not list((out / "W056").glob(".partial/*")), "nothing over the cap is kept"
        assert all((out / w.relative_to(src)).read_bytes() == w.read_bytes() for w in wanted[2:])
        assert not any(e["range"] for e in storage_gets(d)), "the oversized partial was not resumed"
        assert download.main(args(d, out, "--max-file-mb", "0.1")) == 0
        assert_same_files(wanted, src, out)


def test_control_characters_in_names_are_refused_at_planning():
    ts = pd.Timestamp("2023-05-18T10:00:00Z")
    newline = upload(ts, "W056", rgb_name(6144, 2048, 1).replace("_position", "\n_position"), 1)
    in_url = upload(ts, "W056", thermal_name(1), 1)
    in_url["value"] = in_url["value"].replace("_position", "%0D_position")
    plan, _, rejected = plan_downloads(pd.DataFrame([newline, in_url, upload(ts, "W056", rgb_name(6144, 2048, 5), 5)]))
    assert plan["filename"].tolist() == [rgb_name(6144, 2048, 5)]
    assert [r for _, r in rejected] == [f"control character in the file name {newline['meta.filename']!r}: it "
                                        "would break the two-line pair files",
                                        f"control character in the file name {thermal_name(1)!r}: it would "
                                        "break the two-line pair files"]


@pytest.mark.parametrize("option, value", [("--retries", "-1"), ("--timeout", "0"), ("--deadline", "-5"),
                                           ("--max-file-mb", "0"), ("--timeout", "nan"), ("--backoff", "-1")])
def test_numeric_options_are_validated(env, capsys, option, value):
    with pytest.raises(SystemExit) as e:
        download.main(["--from-query", str(env / "q.csv"), "--out", str(env / "out"), option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{option} must be" in err


def test_credentials_with_a_remote_plain_http_storage_url_exit_2(env, capsys):
    src, out = env / "src", env / "out"
    make_raw(src, captures=1)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out, "--storage-url", "http://storage.example.org")) == 2
        assert storage_gets(d) == []
    err = capsys.readouterr().err
    assert "refusing to send credentials over plain http to storage.example.org" in err and JOB not in err
