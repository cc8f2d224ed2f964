"""data.prepare: both raw layouts, every fault kind, sky filter, day-blocked splits, incremental and
interrupted reruns, RGB↔thermal alignment. Hand-made tiny files (96×32 JPG, 16×12 CSV) keep it fast."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import data.prepare.run as prep
from data.formats import format_thermal_csv, rgb_name, thermal_fov_box, thermal_name, thermal_plot_name
from data.prepare.obstruction import MAX_SHARE, MIN_CAPTURES, STATIC_SHARE, static_mask
from data.prepare.run import assign_splits, prepare
from data.sky import clear_sky_celsius, preset_elevation_deg, row_elevation_deg

W, H, TW, TH = 96, 32, 16, 12
NOON = pd.Timestamp("2023-05-18T17:00Z")  # Lemont, IL: midday; 06:00Z is night
OUTPUTS = ("index.parquet", "rgb.npy", "thermal.npy", "norm_stats.json", "report.json", "skipped.csv",
           "bad_pairs.csv")


def jpg_bytes(square: tuple[float, float] | None = None) -> bytes:
    """A 3:1 combined frame; optional bright square at (x, y) fractions of the thermal field of view."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (40, 60, 120)
    if square:
        left, top, right, bottom = thermal_fov_box(W // 2, H)
        x = left + round(square[0] * (right - left))
        y = top + round(square[1] * (bottom - top))
        img[y - 3:y + 3, x - 3:x + 3] = 255
    buf = BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def csv_text(square: tuple[float, float] | None = None, *, w: int = TW, h: int = TH) -> str:
    celsius = np.full((h, w), -40.0)
    celsius[0, 0] = -41.5  # a negative value with decimals
    if square:
        x, y = round(square[0] * w), round(square[1] * h)
        celsius[y - 2:y + 2, x - 2:x + 2] = 20.0
    return format_thermal_csv(celsius)


def capture(raw: Path, when, position: int, *, vsn="W056", thermal_position=None, rgb=True, thermal=True,
            square=None, jpg: bytes | None = None, csv: str | None = None) -> int:
    ts = pd.Timestamp(when).value
    if rgb:
        path = raw / vsn / "rgb" / f"{ts}-{rgb_name(W * 8, H * 8, position)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpg if jpg is not None else jpg_bytes(square))
    if thermal:
        pos = position if thermal_position is None else thermal_position
        path = raw / vsn / "thermal" / f"{ts}-{thermal_name(pos, width=TW, height=TH)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(csv if csv is not None else csv_text(square))
    return ts


def run(raw, out, **kw):
    return prepare(raw, out, **{"size": 16, "workers": 1, "progress": False, **kw})


def read_outputs(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in OUTPUTS if name != "index.parquet"} | {
        "index": pd.read_parquet(out / "index.parquet"),
        "pairs": sorted((p.relative_to(out).as_posix(), p.read_text()) for p in (out / "pairs").rglob("*.txt"))}


def assert_same_outputs(a: Path, b: Path) -> None:
    x, y = read_outputs(a), read_outputs(b)
    pd.testing.assert_frame_equal(x.pop("index"), y.pop("index"))
    assert x == y


@pytest.fixture
def faulty_raw(tmp_path):
    raw = tmp_path / "raw"
    for k in range(3):  # good sky captures, midday and night
        capture(raw, NOON + pd.Timedelta(minutes=5 * k), 1)
        capture(raw, NOON + pd.Timedelta(minutes=5 * k, seconds=3), 5)
    capture(raw, "2023-05-18T06:00Z", 9)
    capture(raw, NOON + pd.Timedelta(minutes=20), 2)  # not a sky preset
    ts = capture(raw, NOON + pd.Timedelta(minutes=25), 13)
    (raw / "W056" / "thermal" / f"{ts}-{thermal_plot_name(13, width=TW, height=TH)}").write_bytes(jpg_bytes())
    (raw / "W056" / "thermal" / f"{ts}-right_16x12_14bit.thermal.uint_position13.csv").write_text("1;2\n")
    (raw / "W056" / "thermal" / f"{ts}-right_16x12_14bit.thermal_position13.raw").write_bytes(b"\0" * 8)
    (raw / "W056" / "thermal" / f"{ts}-right_16x12_14bit.thermal.celsius_position13.nc").write_bytes(b"CDF")
    capture(raw, NOON + pd.Timedelta(minutes=30), 17, thermal=False)  # missing thermal
    capture(raw, NOON + pd.Timedelta(minutes=35), 21, thermal_position=25)  # position mismatch
    capture(raw, NOON + pd.Timedelta(minutes=40), 25, csv=csv_text()[:300])  # truncated CSV
    capture(raw, NOON + pd.Timedelta(minutes=45), 29, jpg=jpg_bytes()[:400])  # corrupt (truncated) JPG
    capture(raw, NOON + pd.Timedelta(minutes=50), 1, csv=csv_text().replace(";-39.99;", ";nan;", 1))  # NaN
    capture(raw, NOON + pd.Timedelta(minutes=55), 5, csv=csv_text(w=TW - 2))  # header 14x12, name 16x12
    capture(raw, NOON + pd.Timedelta(minutes=60), 9, jpg=_square_jpg())  # wrong RGB dimensions
    ts = pd.Timestamp(NOON + pd.Timedelta(minutes=65)).value  # no position in the names (old sampler)
    (raw / "W056" / "rgb" / f"{ts}-{W * 8}x{H * 8}.jpg").write_bytes(jpg_bytes())
    (raw / "W056" / "thermal" / f"{ts}-right_16x12_14bit.thermal.celsius.csv").write_text(csv_text())
    return raw


def _square_jpg() -> bytes:  # wrong dimensions: not a 3:1 combined frame
    buf = BytesIO()
    Image.new("RGB", (W, W)).save(buf, format="JPEG")
    return buf.getvalue()


def test_every_fault_is_skipped_with_its_reason_and_the_run_goes_on(faulty_raw, tmp_path):
    out = tmp_path / "prep"
    report = run(faulty_raw, out)
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 8 and list(index.row) == list(range(8))
    assert index.position.tolist() == [9, 1, 5, 1, 5, 1, 5, 13]  # sorted by time; the 06:00Z capture first
    assert index.is_day.tolist() == [False] + [True] * 7
    assert (index.sun_elevation < 0).tolist() == [True] + [False] * 7
    assert report["skipped_by_reason"] == {
        "bad_thermal": 2, "corrupt_jpg": 1, "no_position": 2, "no_thermal": 1, "other_row": 2,
        "rgb_dims": 1, "thermal_dims": 1, "thermal_nc": 1, "thermal_plot": 1, "thermal_raw": 1, "thermal_uint": 1}
    skipped = pd.read_csv(out / "skipped.csv")
    truncated = skipped[skipped.file.str.contains("position25.csv")]
    assert truncated.reason.tolist() == ["bad_thermal"] and "file truncated" in truncated.detail.iloc[0]
    assert skipped[skipped.detail.str.contains("non-finite", na=False)].file.str.contains("position1.csv").all()
    bad = pd.read_csv(out / "bad_pairs.csv")
    assert len(bad) == 1 and bad.reason[0] == "position mismatch: rgb 21, thermal 25"
    assert (faulty_raw / bad.rgb_file[0]).exists() and (faulty_raw / bad.thermal_file[0]).exists()  # not deleted
    assert report["pairs"] == 8 and report["bad_pairs"] == 1 and report["night_pairs"] == 1
    rgb, thermal = np.load(out / "rgb.npy", mmap_mode="r"), np.load(out / "thermal.npy", mmap_mode="r")
    assert rgb.shape == (8, 16, 16, 3) and rgb.dtype == np.uint8
    assert thermal.shape == (8, 16, 16) and thermal.dtype == np.float16
    assert index.t_min.iloc[0] == pytest.approx(-41.51, abs=0.02)
    assert index.t_max.iloc[0] == pytest.approx(-40, abs=0.02)
    pair_file = out / "pairs" / "W056" / f"{index.timestamp.iloc[0].value}_position9.txt"
    assert pair_file.read_text().splitlines() == [Path(index.rgb_file[0]).name, Path(index.thermal_file[0]).name]
    stats = json.loads((out / "norm_stats.json").read_text())
    assert stats["thermal_mean"] == pytest.approx(-40, abs=0.5) and len(stats["rgb_std"]) == 3


def test_all_positions_and_unpositioned_are_opt_in(faulty_raw, tmp_path):
    run(faulty_raw, tmp_path / "p", all_positions=True, keep_unpositioned=True)
    index = pd.read_parquet(tmp_path / "p" / "index.parquet")
    assert {2, -1} <= set(index.position) and len(index) == 10


def test_original_workflow_layout(tmp_path):
    raw, registry = tmp_path / "orig", tmp_path / "nodes.json"
    registry.write_text(json.dumps({"W057": [{"from": None, "to": None, "lat": 41.7, "lon": -87.99,
                                              "tz": "America/Chicago"}]}))
    for folder, stamp, pos in (("rgb", "20230521-170000", 10), ("rgb/processed", "20230521-170500", 1),
                               ("rgb/processed", "20230521-171000", 5)):
        (raw / folder).mkdir(parents=True, exist_ok=True)
        (raw / folder / f"rgb_{stamp}_W057_{W * 8}x{H * 8}_position{pos}.jpg").write_bytes(jpg_bytes())
        (raw / "thermal").mkdir(exist_ok=True)
        (raw / "thermal" / f"{stamp}_W057_right_16x12_14bit.thermal.celsius_position{pos}.csv").write_text(csv_text())
    (raw / "pairs" / "W057").mkdir(parents=True)  # old pair files are left alone
    report = run(raw, tmp_path / "p", all_positions=True, registry=registry)
    index = pd.read_parquet(tmp_path / "p" / "index.parquet")
    assert report["pairs"] == 3 and index.vsn.unique().tolist() == ["W057"]
    assert index.timestamp.iloc[0] == pd.Timestamp("2023-05-21T17:00:00Z")
    assert index.position.tolist() == [10, 1, 5] and index.rgb_file[1].startswith("rgb/processed/")
    assert (tmp_path / "p" / "pairs" / "W057" / f"{index.timestamp.iloc[2].value}_position5.txt").read_text() == (
        f"rgb_20230521-171000_W057_{W * 8}x{H * 8}_position5.jpg\n"
        "20230521-171000_W057_right_16x12_14bit.thermal.celsius_position5.csv\n")


def test_rgb_and_thermal_stay_pixel_aligned(tmp_path):
    raw = tmp_path / "raw"
    spots = [(0.3, 0.4), (0.7, 0.6)]
    for k, spot in enumerate(spots):
        capture(raw, NOON + pd.Timedelta(minutes=5 * k), 1, square=spot)
    out = tmp_path / "p"
    run(raw, out, size=24)
    rgb, thermal = np.load(out / "rgb.npy"), np.load(out / "thermal.npy").astype(np.float32)
    for k, (x, y) in enumerate(spots):
        for img in (rgb[k].mean(-1), thermal[k]):
            wy, wx = np.nonzero(img > (img.max() + img.min()) / 2)
            assert abs(wx.mean() - x * 24) <= 1.5 and abs(wy.mean() - y * 24) <= 1.5


def test_splits_are_whole_days_stable_when_days_are_added():
    days = [str(pd.Timestamp("2023-01-01") + pd.Timedelta(days=d))[:10] for d in range(60)]
    split = assign_splits(days[:40], seed=3)
    assert assign_splits(days, seed=3) | split == assign_splits(days, seed=3)  # the first 40 did not move
    assert 0.5 < sum(s == "train" for s in split.values()) / 40 < 0.9
    assert assign_splits(days[:40], seed=4) != split
    for n in (3, 4, 5):
        assert set(assign_splits(days[:n], seed=0).values()) == {"train", "val", "test"}


def test_incremental_rerun_decodes_only_new_captures_and_matches_a_fresh_run(tmp_path):
    raw = tmp_path / "raw"
    for k in range(4):
        capture(raw, NOON + pd.Timedelta(days=k), 1)
    run(raw, tmp_path / "inc")
    for k in range(4, 6):
        capture(raw, NOON + pd.Timedelta(days=k), 5)
    run(raw, tmp_path / "inc")
    runs = [json.loads(line) for line in (tmp_path / "inc" / "runs.jsonl").read_text().splitlines()]
    assert [(r["decoded"], r["cached"]) for r in runs] == [(4, 0), (2, 4)]
    run(raw, tmp_path / "fresh")
    assert_same_outputs(tmp_path / "inc", tmp_path / "fresh")


def test_cache_is_counted_and_pruned_only_on_request(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for k in range(3):
        capture(raw, NOON + pd.Timedelta(days=k), 1)
    run(raw, out)
    run(raw, out, size=8)  # other settings: three more entries
    leftover = next((out / "cache").glob("*/*.npz")).parent / ".x.npz.123.tmp"  # what a killed run leaves
    leftover.write_bytes(b"partial")
    entries = sorted(p.name for p in (out / "cache").glob("*/*.npz"))
    first, second = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert (first["cache_entries"], second["cache_entries"], second["pruned_entries"]) == (3, 6, 0)
    assert second["cache_bytes"] == sum(p.stat().st_size for p in (out / "cache").glob("*/*.npz"))
    before = read_outputs(out)
    run(raw, out, size=8, prune_cache=True)
    last = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    assert (last["decoded"], last["cached"], last["cache_entries"], last["pruned_entries"]) == (0, 3, 3, 3)
    assert not leftover.exists() and len(entries) == 6 and len(list((out / "cache").glob("*/*.npz"))) == 3
    after = read_outputs(out)
    pd.testing.assert_frame_equal(before.pop("index"), after.pop("index"))
    assert before == after, "pruning changes nothing but the cache"


def test_interrupted_run_then_rerun_matches_an_uninterrupted_one(faulty_raw, tmp_path, monkeypatch):
    calls = []

    def dies_after_three(job):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(job)
        return real(job)

    real = prep.process_pair
    monkeypatch.setattr(prep, "process_pair", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(faulty_raw, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "index.parquet").exists()
    monkeypatch.setattr(prep, "process_pair", real)
    run(faulty_raw, tmp_path / "resumed")
    last = json.loads((tmp_path / "resumed" / "runs.jsonl").read_text().splitlines()[-1])
    assert last["cached"] == 3
    run(faulty_raw, tmp_path / "straight")
    assert_same_outputs(tmp_path / "resumed", tmp_path / "straight")


def test_workers_give_the_same_outputs(faulty_raw, tmp_path):
    run(faulty_raw, tmp_path / "one")
    run(faulty_raw, tmp_path / "two", workers=2)
    assert_same_outputs(tmp_path / "one", tmp_path / "two")


def test_cli_help_and_bad_arguments(tmp_path):
    out = subprocess.run([sys.executable, "-m", "data.prepare", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and "--min-elevation" in out.stdout and "--crop" in out.stdout
    with pytest.raises(SystemExit):
        prep.main(["--raw", str(tmp_path), "--out", str(tmp_path / "p"), "--crop", "1,2"])
    out = subprocess.run([sys.executable, "-m", "data.prepare", "--raw", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "p")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("sagecast-prepare: error: raw folder") and "does not exist" in out.stderr


def test_tiny_synthetic_end_to_end(tiny_prepared):
    index = pd.read_parquet(tiny_prepared / "index.parquet")
    assert list(index.columns) == ["vsn", "timestamp", "position", "preset_row", "preset_column", "rgb_file",
                                   "thermal_file", "lat", "lon", "sun_elevation", "is_day", "local_date", "split",
                                   "row", "t_min", "t_mean", "t_max", "cloud_fraction"]
    assert set(index.preset_row) == {"sky"} and (index.position == 4 * index.preset_column + 1).all()
    assert str(index.timestamp.dtype) == "datetime64[ns, UTC]"
    assert index.equals(index.sort_values(["vsn", "timestamp", "position"]))
    assert set(index.position) <= {1, 5, 9, 13, 17, 21, 25, 29}
    days = index.groupby("local_date").split.nunique()
    assert (days == 1).all() and set(index.split) == {"train", "val", "test"}  # no day in two splits
    assert (index.is_day == (index.sun_elevation >= 0)).all() and index.is_day.any() and (~index.is_day).any()
    assert index.lat.nunique() == 2  # W056 moved from Lemont to San Diego on 2023-05-20
    rgb = np.load(tiny_prepared / "rgb.npy", mmap_mode="r")
    assert isinstance(rgb, np.memmap) and rgb.shape == (len(index), 32, 32, 3)
    report = json.loads((tiny_prepared / "report.json").read_text())
    assert report["pairs"] == len(index) and report["bad_pairs"] == 0
    assert report["rows"] == ["sky"] and report["obstruction_masks"] == {}  # the sky row clears every tree


def _tree(root: Path) -> dict:
    """Every entry under root: file bytes, or the link target for links (which may loop)."""
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def test_hostile_files_are_each_skipped_with_a_reason_and_never_modified(tmp_path, monkeypatch):
    """Issue 15 cases 2 and 3: out-of-range values, a header that would allocate terabytes, a 20-digit
    timestamp, an impossible date, an I/O error and a symlink loop next to good captures."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    good = [capture(raw, NOON + pd.Timedelta(minutes=5 * k), 1) for k in range(3)]
    huge = csv_text(square=None).replace(f"width;{TW}", "width;1000000").replace(f"height;{TH}", "height;1000000")
    hostile = {
        "1e308": capture(raw, NOON + pd.Timedelta(minutes=30), 5, csv=csv_text().replace(";-39.99;", ";1e308;", 1)),
        "99999": capture(raw, NOON + pd.Timedelta(minutes=35), 5, csv=csv_text().replace(";-39.99;", ";99999;", 1)),
        "huge": capture(raw, NOON + pd.Timedelta(minutes=40), 5, csv=huge),
        "eio": capture(raw, NOON + pd.Timedelta(minutes=45), 5),
    }
    rgb_dir = raw / "W056" / "rgb"
    (rgb_dir / f"{'9' * 20}-{rgb_name(W * 8, H * 8, 9)}").write_bytes(jpg_bytes())  # 20-digit timestamp
    (rgb_dir / f"{10**18 * 5}-{rgb_name(W * 8, H * 8, 9)}").write_bytes(jpg_bytes())  # year 2128
    (rgb_dir / "1684429200000000000-loop_position9.jpg").symlink_to("1684429200000000000-loop_position9.jpg")
    (raw / "rgb").mkdir()
    (raw / "rgb" / f"rgb_20231399-120000_W056_{rgb_name(W * 8, H * 8, 9)}").write_bytes(jpg_bytes())
    eio_name = f"{hostile['eio']}-{thermal_name(5, width=TW, height=TH)}"
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == eio_name:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real_read(self)

    before = _tree(raw)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    report = run(raw, out)
    monkeypatch.setattr(Path, "read_bytes", real_read)
    assert _tree(raw) == before, "raw files are never modified"
    index = pd.read_parquet(out / "index.parquet")
    assert index.timestamp.map(lambda t: t.value).tolist() == good
    skipped = pd.read_csv(out / "skipped.csv")
    why = {(Path(f).name.split("-")[0], r): d for f, r, d in skipped.itertuples(index=False)}
    for key, needle in (("1e308", "1e+308 does not fit a float32"), ("99999", "first 99999.0 at row 1, column 2"),
                        ("huge", "1..4096 (got 1000000x1000000)"), ("eio", "Input/output error")):
        reason = "unreadable" if key == "eio" else "bad_thermal"
        assert needle in why[str(hostile[key]), reason], (key, why)
    assert "outside the years 2015..2100" in why["9" * 20, "bad_name"]
    assert "outside the years" in why[str(10**18 * 5), "bad_name"]
    assert "20231399" in why["rgb_20231399", "bad_name"]
    assert "Too many levels of symbolic links" in why["1684429200000000000", "unreadable"]
    assert report["skipped_by_reason"]["bad_thermal"] == 3 and report["skipped_by_reason"]["bad_name"] == 3
    stats = json.loads((out / "norm_stats.json").read_text())
    assert all(np.isfinite(v).all() for k, v in stats.items() if k.startswith(("rgb", "thermal")))
    assert stats["thermal_mean"] == pytest.approx(-40, abs=0.1)
    assert run(raw, out)["pairs"] == 4  # the I/O error has passed: the next run takes the pair


def test_a_killed_runs_temp_arrays_are_removed_at_start(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    capture(raw, NOON, 1)
    run(raw, out)
    left = [out / ".rgb.npy.k1ll3d.tmp", out / ".thermal.npy.x.tmp", next((out / "cache").glob("*/")) / ".e.npz.1.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 1000)
    run(raw, out)
    assert not any(p.exists() for p in left) and (out / "rgb.npy").exists()


def test_non_finite_norm_stats_fail_the_run_naming_the_cause(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    capture(raw, NOON, 1)
    run(raw, out)
    entry = next((out / "cache").glob("*/*.npz"))  # e.g. a cache written by an older, unchecked version
    with np.load(entry) as z:
        poisoned = {k: z[k] for k in z.files}
    poisoned["thermal"] = np.full_like(poisoned["thermal"], np.inf)
    with open(entry, "wb") as f:
        np.savez(f, **poisoned)
    old = (out / "norm_stats.json").read_bytes()
    with pytest.raises(SystemExit, match="non-finite thermal_mean, thermal_std .*rows with non-finite values: "
                                         r"\[0\]"):
        run(raw, out)
    assert (out / "norm_stats.json").read_bytes() == old and not list(out.glob(".*.tmp"))


def _clear_sky_csv(position: int, *, warm_rows: int = 0) -> str:
    """Clear sky at the preset's own row elevations, 2 K colder than expected; `warm_rows` bottom rows at 20 °C."""
    celsius = np.repeat(clear_sky_celsius(row_elevation_deg(TH, centre_deg=preset_elevation_deg(position)))[:, None]
                        - 2.0, TW, axis=1)
    celsius[TH - warm_rows:] = 20.0
    return format_thermal_csv(celsius)


def test_rows_select_presets_and_each_row_uses_its_own_elevations(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "p"
    for k in range(3):
        for pos in (1, 2, 3):  # sky, horizon, below the horizon
            capture(raw, NOON + pd.Timedelta(minutes=5 * k, seconds=3 * pos), pos, csv=_clear_sky_csv(min(pos, 2)))
    report = run(raw, out, rows="sky,horizon")
    index = pd.read_parquet(out / "index.parquet")
    assert index.position.tolist() == [1, 2] * 3 and index.preset_row.tolist() == ["sky", "horizon"] * 3
    assert (index.preset_column == 0).all() and report["skipped_by_reason"] == {"other_row": 6}
    # clear sky at 14–50° would be "cloud" under the sky row's 32–68° thresholds; at its own, it is clear
    assert (index.cloud_fraction == 0).all()
    record = json.loads((out / "complete.json").read_text())
    assert report["rows"] == ["sky", "horizon"] and record["settings"]["rows"] == ["sky", "horizon"]
    report = run(raw, out)  # the same folder, the default rows: nothing of the horizon row is reused
    index = pd.read_parquet(out / "index.parquet")
    assert index.position.tolist() == [1] * 3 and report["rows"] == ["sky"]
    assert json.loads((out / "complete.json").read_text())["settings"]["rows"] == ["sky"]
    assert np.load(out / "rgb.npy").shape[0] == 3 and report["skipped_by_reason"] == {"other_row": 12}
    report = run(raw, out, rows="horizon", all_positions=True)
    index = pd.read_parquet(out / "index.parquet")  # below the horizon row: no row name, its column all the same
    assert index.preset_row.fillna("-").tolist() == ["sky", "horizon", "-"] * 3 and (index.preset_column == 0).all()


def test_bad_rows_exit_2_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "data.prepare", "--raw", str(tmp_path), "--out", str(tmp_path / "p"),
                          "--rows", "horizon,ground"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "ground" in out.stderr


def test_static_obstruction_mask_rule():
    share = np.zeros((6, 4))
    share[4:, 1] = share[5:, 2] = 1.0  # a tree and a lower roof standing on the bottom edge
    share[1, 3] = 1.0  # always "cloud" up in the sky but not joined to the ground: not an obstruction
    share[3, 1] = STATIC_SHARE - 0.01  # just below the share: ends the tree's column
    mask = static_mask(share, MIN_CAPTURES)
    assert mask.tolist() == [[False] * 4] * 4 + [[False, True, False, False], [False, True, True, False]]
    assert static_mask(share, MIN_CAPTURES - 1) is None  # too few captures to tell
    assert static_mask(np.zeros((6, 4)), MIN_CAPTURES) is None
    deck = np.ones((6, 4))
    deck[: int(6 * (1 - MAX_SHARE)) - 1] = 0.0  # persistent cloud over most of the frame: not a tree
    assert static_mask(deck, MIN_CAPTURES) is None


def test_static_obstructions_leave_the_cloud_fraction(tmp_path):
    raw = tmp_path / "raw"
    for k in range(MIN_CAPTURES):  # a roof in the bottom 3 rows of preset 2, every daytime capture
        capture(raw, NOON + pd.Timedelta(minutes=5 * k), 2, csv=_clear_sky_csv(2, warm_rows=3))
        capture(raw, NOON + pd.Timedelta(minutes=5 * k, seconds=3), 1, csv=_clear_sky_csv(1))
    capture(raw, NOON + pd.Timedelta(minutes=5 * MIN_CAPTURES), 2, csv=_clear_sky_csv(2, warm_rows=6))  # + cloud
    report = run(raw, tmp_path / "p", rows="sky,horizon")
    index = pd.read_parquet(tmp_path / "p" / "index.parquet")
    assert report["obstruction_masks"] == {"W056/2": 0.25}
    horizon = index[index.position == 2].cloud_fraction.to_numpy()
    assert (horizon[:-1] == 0).all() and horizon[-1] == pytest.approx(3 / 9)  # 3 cloudy rows of 9 unobstructed
    assert (index[index.position == 1].cloud_fraction == 0).all()
    report = run(raw, tmp_path / "q", rows="sky,horizon", min_elevation=90)  # no daytime captures: no mask
    index = pd.read_parquet(tmp_path / "q" / "index.parquet")
    assert report["obstruction_masks"] == {} and index[index.position == 2].cloud_fraction.iloc[0] == 0.25
