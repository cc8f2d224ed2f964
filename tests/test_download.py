"""Tests for `data.sage.download` (query, plan, fetch) against the SAGE double in tests/sage_double.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.formats import (
    HORIZON_PRESETS,
    SKY_PRESETS,
    format_thermal_csv,
    read_thermal_csv,
    rgb_name,
    thermal_name,
    thermal_plot_name,
)
from data.sage import download
from data.sage.query import load_query_file, plan_downloads
from tests.sage_double import SageDouble

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).resolve().parents[2] / "shared/samples/sage-query-2024-08-07/sage_query_-1h.mobotix_rows.csv"
USER, TOKEN = "alice", "s3cr3t-T0KEN-value"
JOB = "mobotix-scan-380/sage-mobotix-scan-0.23.11.02/000048b02d3ae31e"


def upload(ts: pd.Timestamp, vsn: str, filename: str, position=None) -> dict:
    return {"timestamp": ts, "name": "upload", "value": f"https://storage.sagecontinuum.org/api/v1/data/{JOB}/"
            f"{ts.value}-{filename}", "meta.filename": filename, "meta.vsn": vsn, "meta.node": "000048b02d3ae31e",
            "meta.plugin": "registry.sagecontinuum.org/bhupendraraut/mobotix-scan:0.23.11.02",
            "meta.position": "" if position is None else str(position), "meta.loop_num": "1"}


def file_bytes(kind: str, size: int, rng) -> bytes:
    """About `size` bytes of random content that passes the downloader's format check: JPEG start and end
    markers around random bytes, or a thermal CSV header over rows of random values."""
    if kind == "rgb":
        return b"\xff\xd8\xff" + rng.integers(0, 256, size - 5, dtype=np.uint8).tobytes() + b"\xff\xd9"
    rows = max(1, size // 60)
    values = rng.uniform(-60, 30, (rows, 10))
    return format_thermal_csv(values, resolution="high").encode()


def make_raw(root: Path, vsn: str = "W056", captures: int = 3, size: int = 30_000) -> list[Path]:
    """A tiny RAW dir: per capture, sky presets 1 and 5 plus non-sky 2 (RGB + thermal files) and plot/.raw
    records without files. Returns the paths of the files a default download must reproduce."""
    rng = np.random.default_rng(0)
    recs, wanted = [], []
    for c in range(captures):
        for pos in (1, 5, 2):
            ts = pd.Timestamp("2023-05-18T10:00:00Z") + pd.Timedelta(minutes=5 * c, seconds=3 * pos,
                                                                        nanoseconds=123456789)
            for kind, name in (("rgb", rgb_name(768, 256, pos)), ("thermal", thermal_name(pos))):
                path = root / vsn / kind / f"{ts.value}-{name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(file_bytes(kind, size + 97 * c, rng))
                recs.append(upload(ts, vsn, name, pos))
                if pos in SKY_PRESETS:
                    wanted.append(path)
            recs.append(upload(ts, vsn, thermal_plot_name(pos), pos))
            recs.append(upload(ts, vsn, f"right_336x252_14bit.thermal_position{pos}.raw", pos))
    (root / vsn / "sage_meta").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(recs).to_csv(root / vsn / "sage_meta" / "uploads.csv")
    return sorted(wanted)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Credentials in the environment, and a HOME without a real ~/.netrc."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAGE_USER", USER)
    monkeypatch.setenv("SAGE_TOKEN", TOKEN)
    return tmp_path


def args(double, out, *extra, start="2023-05-18", end="2023-05-19"):
    return ["--vsn", "W056", "--start", start, "--end", end, "--out", str(out), "--endpoint",
            f"{double.url}/api/v1/query", "--storage-url", double.url, "--backoff", "0.01", "--timeout", "5",
            *extra]


def assert_same_files(wanted: list[Path], src: Path, out: Path) -> None:
    got = sorted(p for kind in ("rgb", "thermal") for p in (out / "W056" / kind).iterdir())
    assert [p.relative_to(out) for p in got] == [p.relative_to(src) for p in wanted]
    for w in wanted:
        assert (out / w.relative_to(src)).read_bytes() == w.read_bytes(), w.name


def storage_gets(double) -> list[dict]:
    return [e for e in double.log if e["method"] == "GET" and e["path"].startswith("/api/v1/data/")]


def test_plan_rules_and_unsafe_names():
    ts = pd.Timestamp("2023-05-18T10:00:00.5Z")
    recs = [upload(ts, "W056", rgb_name(6144, 2048, 1), 1), upload(ts, "W056", thermal_name(1), 1),
            upload(ts, "W056", thermal_plot_name(1), 1), upload(ts, "W056", rgb_name(6144, 2048, 2), 2),
            upload(ts, "W056", "right_336x252_14bit.thermal.uint_position1.csv", 1),
            upload(ts, "W056", "right_336x252_14bit.thermal.celsius_position1.nc", 1),
            upload(ts, "W056", "6144x2048.jpg"), upload(ts, "W056", "../../etc/passwd.jpg", 1),
            upload(ts, "W056", "a\x00b.jpg", 1), upload(ts, "W056", "sub/dir_position1.jpg", 1)]
    plan, skipped, rejected = plan_downloads(pd.DataFrame(recs))
    assert list(plan["kind"]) == ["rgb", "thermal"] and set(plan["position"]) == {"1"}
    assert list(plan["dest"]) == [f"W056/rgb/{ts.value}-6144x2048_position1.jpg",
                                  f"W056/thermal/{ts.value}-{thermal_name(1)}"]
    assert dict(skipped) == {"thermal_plot": 1, "other_row": 1, "thermal_uint": 1, "thermal_nc": 1,
                             "unpositioned": 1}
    assert len(rejected) == 3
    plan, skipped, _ = plan_downloads(pd.DataFrame(recs), all_positions=True, keep_unpositioned=True)
    assert sorted(plan["filename"]) == sorted(["6144x2048_position1.jpg", thermal_name(1),
                                               "6144x2048_position2.jpg", "6144x2048.jpg"])
    horizon, skipped, _ = plan_downloads(pd.DataFrame(recs), rows=("sky", "horizon"))
    assert set(horizon["position"]) == {"1", "2"} and "other_row" not in skipped
    below = upload(ts, "W056", rgb_name(6144, 2048, 3), 3)  # tilt 2: in no named row
    plan, skipped, _ = plan_downloads(pd.DataFrame([*recs, below]), rows=("horizon",))
    assert list(plan["position"]) == ["2"] and skipped["other_row"] == 3
    plan, _, _ = plan_downloads(pd.DataFrame([*recs, below]), rows=("horizon",), all_positions=True)
    assert set(plan["position"]) == {"1", "2", "3"}


def test_rows_option_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        download.main(["--vsn", "W056", "--start", "2023-05-18", "--end", "2023-05-19", "--out", str(tmp_path),
                       "--rows", "sky,zenith", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "zenith" in err


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared samples folder absent")
def test_plan_real_saved_query_csv():
    df = load_query_file(SAMPLE)
    assert len(df) == 102 and str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    plan, skipped, rejected = plan_downloads(df)
    assert not rejected
    names = df["meta.filename"]
    sky_rgb = names.str.fullmatch(r"6144x2048_position(1|5|9|13|17|21|25|29)\.jpg").sum()
    assert (plan["kind"] == "rgb").sum() == sky_rgb
    assert not plan["filename"].str.contains("plot").any()
    assert skipped["thermal_plot"] == names.str.contains("celsius_plot").sum()
    for row in plan.itertuples():  # ts_ns from the URL equals the record time
        assert row.url.rsplit("/", 1)[1] == f"{row.ts_ns}-{row.filename}"
        assert pd.Timestamp(row.timestamp).value == row.ts_ns
    everything, _, _ = plan_downloads(df, all_positions=True, keep_unpositioned=True)
    assert everything["filename"].str.contains("_Pt1-").any()  # custom mode kept only on request


def post(double, body: bytes):
    req = urllib.request.Request(f"{double.url}/api/v1/query", body)
    try:
        with urllib.request.urlopen(req, timeout=5) as f:
            return 200, [json.loads(ln) for ln in f.read().splitlines()]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_double_query_rules(tmp_path):
    make_raw(tmp_path, captures=2)
    track = [(pd.Timestamp("2023-05-18T00:00Z") + pd.Timedelta(hours=h), 41.7, -87.99) for h in range(6)]
    with SageDouble(tmp_path, gps={"W056": track}, lifetime_s=60) as d:
        q = {"start": "2023-05-18T00:00:00Z", "end": "2023-05-19T00:00:00Z"}
        assert post(d, json.dumps({**q, "bogus": 1}).encode())[0] == 400
        assert post(d, json.dumps({"end": q["end"]}).encode())[0] == 400
        assert post(d, json.dumps({**q, "filter": {"vsn": "W0(56)"}}).encode())[0] == 400
        assert post(d, json.dumps({**q, "filter": {"vsn": "W056" + " " * 5000}}).encode())[0] == 400
        code, rows = post(d, json.dumps({**q, "filter": {"name": "upload", "meta.filename": "x"}}).encode())
        assert code == 200 and rows == []  # keys are bare: meta.filename is an unknown tag
        _, rows = post(d, json.dumps({**q, "filter": {"name": "upload", "vsn": "W056"}}).encode())
        assert len(rows) == 2 * 3 * 4 and rows != sorted(rows, key=lambda r: r["timestamp"])
        _, rows = post(d, json.dumps({**q, "filter": {"name": "upload", "filename": "768x256.*1.jpg"}}).encode())
        assert len(rows) == 2 and all(r["meta"]["filename"] == "768x256_position1.jpg" for r in rows)
        _, rows = post(d, json.dumps({**q, "filter": {"name": "upload", "filename": "position1"}}).encode())
        assert rows == []  # no | or *: exact match
        _, rows = post(d, json.dumps({**q, "filter": {"name": "sys.gps.lat|sys.gps.lon"}, "tail": 2}).encode())
        assert len(rows) == 4 and {r["timestamp"] for r in rows} == {"2023-05-18T04:00:00Z", "2023-05-18T05:00:00Z"}


def test_end_to_end_and_rerun_skips(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out, "--dry-run")) == 0
        assert not (out / "W056" / "rgb").exists()
        plan = pd.read_csv(out / "plan.csv")
        assert len(plan) == len(wanted) and set(plan["position"]) == {1, 5}
        assert download.main(args(d, out, "--workers", "4")) == 0
        assert_same_files(wanted, src, out)
        saved = list((out / "W056" / "sage_meta").glob("upload_20230518T000000Z_20230519T000000Z_*.csv"))
        assert len(saved) == 1 and len(load_query_file(saved[0])) == 3 * 3 * 4
        assert not (out / "W056" / ".partial").exists()
        n_posts, n_gets = sum(e["method"] == "POST" for e in d.log), len(storage_gets(d))
        assert download.main(args(d, out)) == 0  # re-run: no new query, no file fetched again
        assert sum(e["method"] == "POST" for e in d.log) == n_posts and len(storage_gets(d)) == n_gets
        assert pd.read_csv(out / "failed_urls.csv").empty
        assert download.main(args(d, env / "none", start="2023-06-01", end="2023-06-03")) == 0  # no uploads
        assert pd.read_csv(env / "none" / "plan.csv").empty


def test_faults_retried_and_partial_resumed(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src)
    paths = [f"/api/v1/data/{JOB}/{p.name}" for p in wanted]
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        d.fail(paths[0], "500", times=2)
        d.fail(paths[1], "drop")
        d.fail(paths[2], "bad_length")
        d.fail(paths[3], "drop", times=2)
        assert download.main(args(d, out, "--workers", "3")) == 0
        assert_same_files(wanted, src, out)
        ranged = [e for e in storage_gets(d) if e["range"]]
        assert {e["path"] for e in ranged} >= {paths[1], paths[3]}  # resumed after the drop, not restarted
    # a server that ignores Range: the partial file is thrown away, the result is still exact
    for p in wanted[:2]:
        (out / p.relative_to(src)).unlink()
        part = out / "W056" / ".partial" / p.name
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(p.read_bytes()[:1000])
    with SageDouble(src, user=USER, token=TOKEN, ignore_range=True, lifetime_s=60) as d:
        assert download.main(args(d, out)) == 0
        assert_same_files(wanted, src, out)
        assert sum(e["range"] is not None for e in storage_gets(d)) == 2


def test_timeouts_bounded_and_failures_listed(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    slow = f"/api/v1/data/{JOB}/{wanted[0].name}"
    gone = f"/api/v1/data/{JOB}/{wanted[1].name}"
    with SageDouble(src, user=USER, token=TOKEN, slow_s=3, lifetime_s=60) as d:
        d.fail(slow, "slow", times=5)
        d.fail(gone, "404", times=5)
        code = download.main(args(d, out, "--timeout", "0.3", "--retries", "1"))
        assert code == 1
        failed = pd.read_csv(out / "failed_urls.csv")
        reasons = dict(zip([u.rsplit("/", 1)[1] for u in failed["url"]], failed["reason"], strict=True))
        assert set(reasons) == {wanted[0].name, wanted[1].name}
        assert "timed out" in reasons[wanted[0].name] and "2 attempts" in reasons[wanted[0].name]
        assert "404" in reasons[wanted[1].name]
        assert sum(e["path"] == gone for e in d.log) == 1  # 404 is not retried
        assert len(list(out.glob("W056/rgb/*")) + list(out.glob("W056/thermal/*"))) == 2


def test_401_fails_fast_with_message(env, monkeypatch, capsys):
    src, out = env / "src", env / "out"
    make_raw(src)
    monkeypatch.delenv("SAGE_TOKEN")
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        assert download.main(args(d, out, "--workers", "2")) == 3
        assert len(storage_gets(d)) <= 2
    err = capsys.readouterr().err
    assert "401" in err and "SAGE_USER" in err and "SAGE_TOKEN" in err and "~/.netrc" in err


def test_netrc_credentials_never_leak_nor_follow_redirects(env, monkeypatch, capfd):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    monkeypatch.delenv("SAGE_USER")
    monkeypatch.delenv("SAGE_TOKEN")
    netrc = env / "home" / ".netrc"
    netrc.parent.mkdir()
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {TOKEN}\n")
    netrc.chmod(0o600)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d, \
            SageDouble(src, lifetime_s=60) as other:
        moved = f"/api/v1/data/{JOB}/{wanted[0].name}"
        d.redirects[moved] = other.url + moved
        assert download.main(args(d, out)) == 3  # the other host wants credentials: it never gets ours
        assert [e["auth"] for e in other.log] == [False]
        del d.redirects[moved]
        assert download.main(args(d, out)) == 0
        assert_same_files(wanted, src, out)
    secrets = [TOKEN, base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()]
    captured = capfd.readouterr()
    texts = [captured.out, captured.err] + [p.read_bytes().decode(errors="replace")
                                             for p in out.rglob("*") if p.is_file()]
    assert len(texts) >= 9 and not any(s in t for s in secrets for t in texts)


def test_from_query_csv_and_ndjson(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=1)
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=60) as d:
        body = json.dumps({"start": "2023-05-18T00:00:00Z", "filter": {"name": "upload"}}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{d.url}/api/v1/query", body), timeout=5) as f:
            (env / "saved.ndjson").write_bytes(f.read())
        load_query_file(env / "saved.ndjson").to_csv(env / "saved.csv")
        for saved in ("saved.ndjson", "saved.csv"):
            dest = out / saved
            assert download.main(["--from-query", str(env / saved), "--out", str(dest), "--storage-url", d.url,
                                  "--backoff", "0.01"]) == 0
            assert_same_files(wanted, src, dest)
    assert pd.read_csv(out / "saved.csv" / "plan.csv").equals(pd.read_csv(out / "saved.ndjson" / "plan.csv"))


@pytest.mark.slow
def test_killed_midway_then_rerun(env):
    src, out = env / "src", env / "out"
    wanted = make_raw(src, captures=4, size=60_000)
    with SageDouble(src, user=USER, token=TOKEN, trickle_s=0.02, lifetime_s=120) as d:
        proc = subprocess.Popen([sys.executable, "-m", "data.sage.download", *args(d, out, "--workers", "2")],
                                cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("W056/rgb/*")) + list(out.glob("W056/thermal/*"))) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done = [p for kind in ("rgb", "thermal") if (out / "W056" / kind).exists()
                for p in (out / "W056" / kind).iterdir()]
        assert 3 <= len(done) < len(wanted)
        for p in done:  # whatever is visible is complete; partial data lives only in .partial/
            assert not p.name.startswith(".") and p.read_bytes() == (src / p.relative_to(out)).read_bytes()
        assert download.main(args(d, out)) == 0
        assert_same_files(wanted, src, out)


@pytest.mark.slow
def test_synthetic_day_through_the_double_then_prepare(env):
    """The whole offline flow: data.synthetic → double → data.sage.download → data.prepare."""
    from data.synthetic.generate import generate

    src, out = env / "src", env / "out"
    generate(src, nodes=["W056"], start="2023-05-18", days=1, interval_min=120, seed=0, size="small",
             fault_rate=0.0, progress=False)
    wanted = sorted(p for kind in ("rgb", "thermal") for p in (src / "W056" / kind).iterdir())
    with SageDouble(src, user=USER, token=TOKEN, fault_rate=0.05, lifetime_s=120) as d:
        assert download.main(args(d, out, start="2023-05-18", end="2023-05-20")) == 0
    assert len(wanted) == 2 * 8 * 12
    assert_same_files(wanted, src, out)
    prepared = env / "prepared"
    subprocess.run([sys.executable, "-m", "data.prepare", "--raw", str(out), "--out", str(prepared), "--size", "32"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    index = pd.read_parquet(prepared / "index.parquet")
    assert len(index) == 8 * 12 and set(index["position"]) == set(SKY_PRESETS)


@pytest.mark.slow
def test_horizon_row_through_the_double_then_prepare(env):
    """A clear day with both rows: data.synthetic → double → download/prepare `--rows sky,horizon`, and the
    default (`sky`) from the same double."""
    from data.prepare.run import prepare
    from data.sky import cloud_mask, preset_elevation_deg
    from data.synthetic.generate import generate

    src, out, sky_out = env / "src", env / "out", env / "sky_out"
    generate(src, nodes=["W056"], start="2023-06-01", days=1, interval_min=30, seed=0, size="small", regime="clear",
             fault_rate=0.0, rows=("sky", "horizon"), progress=False)
    wanted = sorted(p for kind in ("rgb", "thermal") for p in (src / "W056" / kind).iterdir())
    with SageDouble(src, user=USER, token=TOKEN, lifetime_s=300) as d:
        assert download.main(args(d, out, "--rows", "sky,horizon", start="2023-06-01", end="2023-06-03")) == 0
        assert download.main(args(d, sky_out, start="2023-06-01", end="2023-06-03")) == 0
    assert len(wanted) == 2 * 16 * 48
    assert_same_files(wanted, src, out)
    report = prepare(out, env / "prepared", size=32, rows="sky,horizon", workers=1, progress=False)
    index = pd.read_parquet(env / "prepared" / "index.parquet")
    assert report["rows"] == ["sky", "horizon"] and len(index) == 16 * 48
    assert json.loads((env / "prepared" / "complete.json").read_text())["settings"]["rows"] == ["sky", "horizon"]
    assert list(index["row"]) == list(range(len(index)))
    for name, presets in (("sky", SKY_PRESETS), ("horizon", HORIZON_PRESETS)):
        part = index[index.preset_row == name]
        assert set(part.position) == set(presets) and sorted(set(part.preset_column)) == list(range(8))
        assert (part.position == part.preset_column * 4 + 1 + (name == "horizon")).all()
    horizon = index[index.preset_row == "horizon"]
    assert np.isfinite(horizon.cloud_fraction).all() and horizon.cloud_fraction.mean() < 0.1  # a clear day
    truth = pd.read_parquet(src / "W056" / "truth.parquet").set_index(["ts_ns", "position"])
    horizon = horizon.assign(truth=[truth.cloud_fraction[(t.value, p)] for t, p in zip(horizon.timestamp,
                                                                                       horizon.position, strict=True)])
    masked = {int(k.split("/")[1]) for k in report["obstruction_masks"]}
    assert masked and masked <= set(HORIZON_PRESETS)  # only horizon frames show trees and roofs
    for position in masked:  # the raw rule counts trees as cloud; the prepared fraction leaves them out
        part = horizon[horizon.position == position]
        raw_rule = [cloud_mask(read_thermal_csv(out / f), centre_deg=preset_elevation_deg(position)).mean()
                    for f in part.thermal_file]
        assert np.mean(np.abs(part.cloud_fraction - part.truth)) < 0.01
        assert np.mean(raw_rule) > part.cloud_fraction.mean() + 0.005
    prepare(sky_out, env / "prepared_sky", size=32, workers=1, progress=False)
    sky = pd.read_parquet(env / "prepared_sky" / "index.parquet")
    assert set(sky.position) == set(SKY_PRESETS) and len(sky) == 8 * 48 and set(sky.preset_row) == {"sky"}
    assert len(list((sky_out / "W056" / "rgb").iterdir())) == 8 * 48
