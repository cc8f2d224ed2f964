"""edge_runtime: preprocessing parity with data.prepare, a replay through pywaggle's offline log mode, bad input
skipped with its reason, an altered model folder refused, and no torch in the runtime."""

import datetime as dt
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from edge_runtime import app, preprocess
from edge_runtime.model import EdgeModel
from edge_runtime.scans import scans_in, stored_files

NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")  # pywaggle's (and SAGE's) rule, with ≤ 128 characters


def offline(monkeypatch, tmp_path, name="log"):
    """pywaggle's offline mode; its broker thread is pointed at a closed local port, never at the network."""
    monkeypatch.setenv("PYWAGGLE_LOG_DIR", str(tmp_path / name))
    monkeypatch.setenv("WAGGLE_PLUGIN_HOST", "127.0.0.1")
    monkeypatch.setenv("WAGGLE_PLUGIN_PORT", "9")
    return tmp_path / name / "data.ndjson"


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def micros(message) -> int:
    """The message's timestamp in µs: pywaggle's log writes naive local time from ns / 1e9 (µs may be off by one)."""
    return round(dt.datetime.fromisoformat(message["timestamp"][:26]).timestamp() * 1e6)


def at(message, time_ns: int) -> bool:
    return abs(micros(message) - time_ns // 1000) <= 1


def test_preprocessing_matches_data_prepare_on_the_same_files(tiny_raw, tiny_prepared):
    from data.dataset import normalised_frames

    index = pd.read_parquet(tiny_prepared / "index.parquet").iloc[::7][:8]
    norm = json.loads((tiny_prepared / "norm_stats.json").read_text())
    rgb = np.stack([preprocess.load_rgb(tiny_raw / f, 32, "fov") for f in index["rgb_file"]])
    thermal = np.stack([preprocess.load_thermal(tiny_raw / f, 32, (-100.0, 150.0)) for f in index["thermal_file"]])
    rows = index["row"].to_numpy()
    np.testing.assert_array_equal(rgb, np.load(tiny_prepared / "rgb.npy")[rows])
    np.testing.assert_array_equal(thermal, np.load(tiny_prepared / "thermal.npy")[rows])
    x, t = preprocess.normalise(rgb, thermal, norm)
    want_x, want_t = normalised_frames(tiny_prepared, rows)
    np.testing.assert_allclose(x, want_x.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(t, want_t.numpy(), rtol=0, atol=1e-6)


def test_runtime_embeddings_match_the_stage1_export(tiny_edge_model, tiny_raw, tiny_stage1_run):
    """Files → frames → ONNX encoders → standardised z, against the torch export's embeddings of the same captures."""
    model = EdgeModel(tiny_edge_model)
    emb = pd.read_parquet(tiny_stage1_run / "embeddings.parquet")
    emb["ts"] = emb["timestamp"].astype("int64")
    scan = next(s for s in scans_in(stored_files(tiny_raw), 60.0) if len(s.files) == 8)
    nowcaster = app.Nowcaster(model, lambda *a: None)
    x, t, present = nowcaster.frames(scan)
    z = model.encode(x, t) * model.std + model.mean
    for k, pos in enumerate(p for p, ok in zip(model.presets, present, strict=True) if ok):
        ts = int(scan.files[pos]["rgb"].name.split("-")[0])
        row = emb[(emb["ts"] == ts) & (emb["position"] == pos)].iloc[0]
        want = np.concatenate([row["emb_rgb"], row["emb_thermal"]])
        np.testing.assert_allclose(z[k], want, rtol=1e-3, atol=1e-4)


def test_replay_publishes_nowcasts_then_forecasts(tiny_edge_model, tiny_raw, tmp_path, monkeypatch):
    log = offline(monkeypatch, tmp_path)
    app.main(["--model", str(tiny_edge_model), "--source", "dir", "--raw", str(tiny_raw)])
    msgs = read_log(log)
    manifest = json.loads((tiny_edge_model / "manifest.json").read_text())
    scans = list(scans_in(stored_files(tiny_raw), manifest["scan_gap_s"]))
    assert {m["name"] for m in msgs} == {"sagecast.cloud.nowcast", "sagecast.cloud.forecast",
                                         "sagecast.time.preprocess", "sagecast.time.encode", "sagecast.time.forecast"}
    assert all(NAME.match(m["name"]) and len(m["name"]) <= 128 for m in msgs)
    assert all(isinstance(v, str) for m in msgs for v in m["meta"].values())
    assert all(any(at(m, s.time_ns) for s in scans) for m in msgs)
    cloud = [m for m in msgs if m["name"].startswith("sagecast.cloud")]
    assert all(0.0 <= m["value"] <= 1.0 for m in cloud)
    now = [m for m in cloud if m["name"] == "sagecast.cloud.nowcast"]
    assert len([m for m in now if m["meta"]["position"] == "all"]) == len(scans)
    assert {m["meta"]["position"] for m in now} == {"all", *map(str, manifest["presets"])}
    fc = [m for m in cloud if m["name"] == "sagecast.cloud.forecast"]
    assert {m["meta"]["horizon_min"] for m in fc} == {"60", "120"}
    # the first scan of each day has no context yet: nowcasts only
    first = min(scans, key=lambda s: s.time_ns)
    assert not [m for m in fc if at(m, first.time_ns)]
    assert fc and all(m["meta"]["model"] == manifest["model"] for m in fc)


def test_coverage_name_only_behind_its_flag(tiny_edge_model, tiny_raw, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    scan = next(iter(scans_in(stored_files(tiny_raw), 60.0)))
    for files in scan.files.values():
        for kind, path in files.items():
            (raw / "W056" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, raw / "W056" / kind / path.name)
    log = offline(monkeypatch, tmp_path, "plain")
    app.main(["--model", str(tiny_edge_model), "--raw", str(raw)])
    assert app.COVERAGE_NAME not in {m["name"] for m in read_log(log)}
    log = offline(monkeypatch, tmp_path, "flag")
    app.main(["--model", str(tiny_edge_model), "--raw", str(raw), "--publish-coverage"])
    msgs = read_log(log)
    cover = [m["value"] for m in msgs if m["name"] == app.COVERAGE_NAME]
    all_sky = [m["value"] for m in msgs if m["name"] == "sagecast.cloud.nowcast" and m["meta"]["position"] == "all"]
    assert cover == all_sky and len(cover) == 1


def test_bad_input_is_skipped_with_its_reason_and_the_loop_goes_on(tiny_edge_model, tiny_raw, tmp_path, monkeypatch):
    scans = list(scans_in(stored_files(tiny_raw), 60.0))[:4]
    raw = tmp_path / "raw"
    for scan in scans:
        for files in scan.files.values():
            for kind, path in files.items():
                (raw / "W056" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, raw / "W056" / kind / path.name)
    (raw / "W056" / "rgb" / scans[0].files[1]["rgb"].name).write_bytes(b"\xff\xd8\xff not a jpeg")
    csv = raw / "W056" / "thermal" / scans[1].files[5]["thermal"].name
    csv.write_bytes(csv.read_bytes()[: len(csv.read_bytes()) // 2])
    (raw / "W056" / "rgb" / scans[2].files[9]["rgb"].name).unlink()
    shutil.copytree(raw / "W056", raw / "W099")  # the same scans, from a node the model was not trained for
    log = offline(monkeypatch, tmp_path)
    app.main(["--model", str(tiny_edge_model), "--raw", str(raw)])
    msgs = read_log(log)
    skips = {(m["value"], m["meta"]["position"]) for m in msgs if m["name"] == "sagecast.skip"}
    assert {("corrupt_jpg", "1"), ("bad_thermal", "5"), ("missing_preset", "9"), ("other_node", "all")} <= skips
    now_all = [m for m in msgs if m["name"] == "sagecast.cloud.nowcast" and m["meta"]["position"] == "all"]
    assert len(now_all) == 4  # every W056 scan still gave its nowcast, from the presets left
    positions_0 = {m["meta"]["position"] for m in msgs if m["name"] == "sagecast.cloud.nowcast"
                   and at(m, scans[0].time_ns)}
    assert "1" not in positions_0 and "5" in positions_0


def test_altered_model_folder_is_refused(tiny_edge_model, tiny_raw, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_edge_model, model)
    probe = json.loads((model / "probe.json").read_text())
    probe["intercept"] += 0.5
    (model / "probe.json").write_text(json.dumps(probe))
    offline(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as e:
        app.main(["--model", str(model), "--raw", str(tiny_raw)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probe.json does not match its sha256" in err[0]


def test_runtime_imports_no_torch_and_no_training_code():
    code = ("import sys, edge_runtime.app, edge_runtime.model, edge_runtime.preprocess, edge_runtime.scans, "
            "edge_runtime.subscribe; "
            "print(sorted(m for m in ('torch', 'pandas', 'numba', 'data', 'stage1_jea', 'stage2_forecast', "
            "'sagecast_common') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_clock_matches_the_prepared_index_at_the_nodes_latest_place(tiny_edge_model, tiny_raw, tiny_prepared):
    """Sun elevation and solar hour as the index and the scan table have them, for the last day's scans (the
    model's location is the node's latest registry place)."""
    model = EdgeModel(tiny_edge_model)
    nowcaster = app.Nowcaster(model, lambda *a: None)
    index = pd.read_parquet(tiny_prepared / "index.parquet")
    index["ts"] = index["timestamp"].astype("int64")
    last = index[index["local_date"] == index["local_date"].max()].groupby("ts").first().reset_index()
    for row in last.itertuples():
        solar_hour, sun_elev, day = nowcaster.clock(row.ts)
        assert sun_elev == pytest.approx(row.sun_elevation, abs=1e-3)
        hours = (row.ts % (86400 * 10**9)) / 3.6e12
        assert solar_hour == pytest.approx((hours + row.lon / 15) % 24, abs=1e-6)
        assert str(day) == str(row.local_date)
