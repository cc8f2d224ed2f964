"""The synthetic sky: SAGE layout and names, determinism, day/night across W056's move, wind, cloud truth, faults.

Run: `.venv/bin/python -m pytest tests/test_synthetic.py -q`
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from data import RegistryError, is_day
from data.formats import (
    HORIZON_PRESETS,
    SKY_PRESETS,
    ThermalFormatError,
    format_thermal_csv,
    parse_mobotix_name,
    read_thermal_csv,
    split_ts_name,
    thermal_fov_box,
    thermal_name,
)
from data.sky import SKY_ELEVATION_DEG, cloud_fraction, cloud_mask, preset_azimuth_deg, preset_elevation_deg
from data.synthetic.generate import generate, main
from data.synthetic.layout import FAULTS, META_COLUMNS, day_spans, fast_thermal_csv, node_key
from data.synthetic.render import preset_view


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _thermal_cloud_fraction(node, r) -> float:
    name = thermal_name(r.position, width=112, height=84)
    return cloud_fraction(read_thermal_csv(node / "thermal" / f"{r.ts_ns}-{name}"))


def _left_mean(path) -> float:
    img = np.asarray(Image.open(path).convert("RGB"), np.float32)
    return float(img[:, : img.shape[1] // 2].mean())


def test_fast_csv_is_byte_identical_to_format_thermal_csv():
    rng = np.random.default_rng(0)
    celsius = np.concatenate([rng.uniform(-60, 30, (20, 17)), [[-300.0] * 17, [400.0] * 17, [0.0] * 17]])
    assert fast_thermal_csv(celsius) == format_thermal_csv(celsius)


def test_day_spans_follow_the_node_time_zone_across_the_move():
    # Chicago midnight 2023-05-19 = 05:00Z; after the move (05-20T00:00Z) midnights are Los Angeles ones (07:00Z).
    spans = day_spans("W056", pd.Timestamp("2023-05-19").date(), 2)
    assert [(str(d), pd.Timestamp(a, tz="UTC"), pd.Timestamp(b, tz="UTC")) for d, a, b in spans] == [
        ("2023-05-19", pd.Timestamp("2023-05-19T05:00Z"), pd.Timestamp("2023-05-20T07:00Z")),
        ("2023-05-20", pd.Timestamp("2023-05-20T07:00Z"), pd.Timestamp("2023-05-21T07:00Z"))]


def test_same_seed_same_bytes_any_workers(tmp_path):
    kw = dict(start="2023-05-18", days=1, hours=1, interval_min=30, fault_rate=0.5, progress=False)
    a = generate(tmp_path / "a", seed=3, workers=1, **kw)
    generate(tmp_path / "b", seed=3, workers=2, **kw)
    generate(tmp_path / "c", seed=4, workers=1, **kw)
    tree_a, tree_b, tree_c = (_tree(tmp_path / k / "W056") for k in "abc")
    assert a["captures"] == 16 and len(tree_a) > 30
    assert tree_a == tree_b
    assert {k: v for k, v in tree_a.items() if k.startswith("rgb/")} != \
           {k: v for k, v in tree_c.items() if k.startswith("rgb/")}


def test_every_file_parses_back_with_sage_names(tiny_raw):
    node = tiny_raw / "W056"
    truth = pd.read_parquet(node / "truth.parquet")
    assert len(truth) == 74 * 8  # local days 18 (24 h), 19 (26 h: the move), 20 (24 h), hourly, 8 presets
    rgb = sorted((node / "rgb").iterdir())
    thermal = {split_ts_name(p.name)[0]: p for p in (node / "thermal").iterdir()}
    assert len(rgb) == len(thermal) == len(truth)
    for path in rgb[::7]:
        ts_ns, name = split_ts_name(path.name)
        parsed = parse_mobotix_name(name)
        assert parsed.kind == "rgb" and parsed.position in SKY_PRESETS and name.startswith("768x256_")
        img = np.asarray(Image.open(path).convert("RGB"), np.float32)
        assert img.shape == (256, 768, 3)
        assert np.abs(img[:, :384] - img[:, 384:]).mean() > 10  # optical and thermal preview differ
        tname = split_ts_name(thermal[ts_ns].name)[1]
        assert tname == thermal_name(parsed.position, width=112, height=84)
        grid = read_thermal_csv(thermal[ts_ns])
        assert grid.shape == (84, 112)
        assert np.array_equal(grid, np.loadtxt(thermal[ts_ns], delimiter=";", skiprows=8).astype(np.float32))
        counts = (grid.astype(np.float64) + 273.15) / 0.04
        assert np.abs(counts - np.rint(counts)).max() < 1e-3
    meta = pd.concat([pd.read_csv(p) for p in sorted((node / "sage_meta").glob("*.csv"))])
    assert list(meta.columns) == META_COLUMNS and len(meta) == 2 * len(truth) and set(meta["name"]) == {"upload"}
    row = meta.iloc[0]
    assert row["value"].startswith("https://storage.sagecontinuum.org/api/v1/data/")
    assert row["value"].endswith(f"/{pd.Timestamp(row['timestamp']).value}-{row['meta.filename']}")


def test_night_is_dark_and_day_bright_on_both_sides_of_the_move(tiny_raw):
    node = tiny_raw / "W056"
    truth = pd.read_parquet(node / "truth.parquet")
    truth["brightness"] = [_left_mean(node / "rgb" / f"{r.ts_ns}-768x256_position{r.position}.jpg")
                           for r in truth.itertuples()]
    day, night = truth[truth.sun_elevation > 6], truth[truth.sun_elevation < -6]
    # auto-exposure lifts night frames up to GAIN_MAX (3×), so day and night differ less than in radiance
    assert day.brightness.min() > 1.5 * night.brightness.max()
    threshold = (day.brightness.min() + night.brightness.max()) / 2
    clear_cut = truth[truth.sun_elevation.abs() > 8]  # auto-exposure brightens civil twilight as a camera does
    assert ((clear_cut.brightness > threshold) == [is_day("W056", t.floor("us")) for t in clear_cut.timestamp]).all()
    # Hours where only the node's location at that time gives the right answer.
    for when, expect in [("2023-05-19T11:00Z", True),   # Lemont: sun up; San Diego would be dark
                         ("2023-05-20T02:00Z", True),   # after the move: San Diego still lit; Lemont dark
                         ("2023-05-20T06:00Z", False)]:
        rows = truth[truth.timestamp.dt.floor("h") == pd.Timestamp(when)]
        assert len(rows) == 8 and is_day("W056", pd.Timestamp(when)) == expect
        assert ((rows.brightness > threshold) == expect).all(), when


def test_thermal_cloud_rule_recovers_true_cloud_fraction(tiny_raw):
    node = tiny_raw / "W056"
    truth = pd.read_parquet(node / "truth.parquet")
    low_only = truth[truth.high_cover == 0].iloc[::4]  # thin cirrus is (realistically) nearly invisible in thermal
    measured = np.array([_thermal_cloud_fraction(node, r) for r in low_only.itertuples()])
    assert len(low_only) > 50 and low_only.cloud_fraction.std() > 0.15  # the sky varies, clear to overcast
    assert np.abs(measured - low_only.cloud_fraction).mean() < 0.04
    assert np.corrcoef(measured, low_only.cloud_fraction)[0, 1] > 0.97
    cirrus = truth[(truth.cloud_fraction_high > 0.3) & (truth.cloud_fraction_low == 0)].iloc[::4]
    seen = np.array([_thermal_cloud_fraction(node, r) for r in cirrus.itertuples()])
    assert len(cirrus) >= 8 and seen.mean() < 0.3 * cirrus.cloud_fraction.mean()


def test_rgb_and_thermal_show_the_same_clouds_pixel_aligned(tiny_raw):
    """Clouds are grey/white, clear sky blue: min/max channel ratio of the optical crop at thermal_fov_box
    correlates best with the thermal cloud mask at zero shift. Views within 60° of the sun are left out: the white
    circumsolar sky there defeats a colour rule, as it does on real cameras."""
    node = tiny_raw / "W056"
    truth = pd.read_parquet(node / "truth.parquet")
    el, sun_el = np.radians(SKY_ELEVATION_DEG), np.radians(truth.sun_elevation)
    cos_sun = np.sin(el) * np.sin(sun_el) + np.cos(el) * np.cos(sun_el) * np.cos(
        np.radians(truth.sun_azimuth - [preset_azimuth_deg(p) for p in truth.position]))
    truth = truth[(truth.sun_elevation > 20) & truth.cloud_fraction.between(0.2, 0.8) & (truth.high_cover == 0)
                  & (cos_sun < 0.5)]
    truth = truth.iloc[:30]
    left, top, right, bottom = thermal_fov_box(384, 256)
    scores = {}
    for r in truth.itertuples():
        img = np.asarray(Image.open(node / "rgb" / f"{r.ts_ns}-768x256_position{r.position}.jpg").convert("RGB"),
                         np.float32)[:, :384]
        whiteness = Image.fromarray((img.min(-1) / np.maximum(img.max(-1), 1) * 255).astype(np.uint8))
        name = thermal_name(r.position, width=112, height=84)
        mask = cloud_mask(read_thermal_csv(node / "thermal" / f"{r.ts_ns}-{name}")).ravel()
        for dx, dy in [(0, 0), (-4, 0), (4, 0), (0, -4), (0, 4)]:
            crop = whiteness.crop((left + dx, top + dy, right + dx, bottom + dy)).resize((112, 84), Image.BILINEAR)
            scores.setdefault((dx, dy), []).append(np.corrcoef(np.asarray(crop, float).ravel(), mask)[0, 1])
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert len(scores[(0, 0)]) >= 10 and mean[(0, 0)] > 0.85
    assert all(mean[(0, 0)] > v + 0.02 for k, v in mean.items() if k != (0, 0)), mean


def test_clear_and_overcast_skies(tmp_path):
    generate(tmp_path / "clear", days=1, hours=0.5, cloud_cover=0.0, fault_rate=0.0, progress=False)
    generate(tmp_path / "overcast", days=1, hours=0.5, cloud_cover=1.0, fault_rate=0.0, progress=False)
    clear = [read_thermal_csv(p) for p in (tmp_path / "clear/W056/thermal").iterdir()]
    overcast = [read_thermal_csv(p) for p in (tmp_path / "overcast/W056/thermal").iterdir()]
    assert all(-46.5 < g.min() and g.max() < -9 and cloud_fraction(g) == 0 for g in clear)
    assert all(cloud_fraction(g) > 0.99 and g.min() > -25 for g in overcast)


def test_clouds_reach_the_downwind_preset_after_the_upwind_one(tmp_path):
    out = tmp_path / "wind"
    generate(out, start="2023-06-01", days=1, hours=5.5, interval_min=2, regime="stratocumulus", cloud_cover=0.5,
             wind_speed=10.0, fault_rate=0.0, truth_only=True, progress=False)
    truth = pd.read_parquet(out / "W056/truth.parquet")
    truth = truth[truth.loop_num > 95].rename(columns={"cloud_fraction": "measured"})  # past the midnight blend
    u, v = truth.wind_u.mean(), truth.wind_v.mean()
    speed, toward = math.hypot(u, v), math.degrees(math.atan2(u, v)) % 360

    def facing(azimuth):
        return min(SKY_PRESETS, key=lambda p: abs((preset_azimuth_deg(p) - azimuth + 180) % 360 - 180))

    def footprint(p):  # ground point under the image centre on the cloud layer
        a = math.radians(preset_azimuth_deg(p))
        dist = truth.low_base_m.mean() / math.tan(math.radians(SKY_ELEVATION_DEG))
        return dist * np.array([math.sin(a), math.cos(a)])

    up, down = facing(toward + 180), facing(toward)
    expected_steps = (footprint(down) - footprint(up)) @ np.array([u, v]) / speed**2 / 120.0
    assert truth.low_base_m.std() < 1.0  # one layer height all along
    series = truth.pivot(index="loop_num", columns="position", values="measured")
    x, y = series[up].to_numpy(), series[down].to_numpy()

    def corr(k):  # correlation of upwind now with downwind k loops later
        return np.corrcoef(x[: len(x) - k], y[k:])[0, 1] if k >= 0 else np.corrcoef(x[-k:], y[: len(y) + k])[0, 1]

    lags = {k: corr(k) for k in range(-6, 7)}
    best = max(lags, key=lags.get)
    assert expected_steps > 1 and best > 0, (expected_steps, lags)
    assert abs(best - expected_steps) <= 1.5 and lags[best] > lags[0] + 0.05


def test_faults_are_written_and_recorded(tmp_path):
    summary = generate(tmp_path, days=1, hours=2, interval_min=10, fault_rate=1.0, progress=False)
    node = tmp_path / "W056"
    faults = pd.read_csv(node / "faults.csv")
    assert set(faults.fault) == set(FAULTS) and len(faults) == summary["captures"]
    assert summary["faults"] == faults.fault.value_counts().to_dict()
    meta = pd.concat([pd.read_csv(p) for p in (node / "sage_meta").glob("*.csv")])
    on_disk = sorted(p.name for p in node.rglob("*") if p.parent.name in ("rgb", "thermal"))
    assert sorted(f"{pd.Timestamp(t).value}-{n}" for t, n in zip(meta.timestamp, meta["meta.filename"],
                                                                  strict=True)) == on_disk
    thermal_by_ts = {}
    for p in (node / "thermal").iterdir():
        thermal_by_ts.setdefault(split_ts_name(p.name)[0], []).append(p)
    for r in faults.itertuples():
        path = node / ("rgb" if r.fault == "corrupt_jpg" else "thermal") / r.file
        files = thermal_by_ts.get(r.ts_ns, [])
        if r.fault == "missing_thermal":
            assert not files and not path.exists()
        elif r.fault == "plot_jpg":
            assert parse_mobotix_name(split_ts_name(r.file)[1]).kind == "thermal_plot" and path.exists()
        elif r.fault == "position_mismatch":
            assert parse_mobotix_name(split_ts_name(r.file)[1]).position != r.position and path.exists()
        elif r.fault == "truncated_csv":
            with pytest.raises(ThermalFormatError):
                read_thermal_csv(path)
        else:
            with pytest.raises(OSError):
                Image.open(path).load()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(RegistryError, match="W999"):
        generate(tmp_path / "x", nodes=["W999"], days=1, hours=0.1, progress=False)
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "x", size="huge", progress=False)
    (tmp_path / "mine" / "W056").mkdir(parents=True)
    (tmp_path / "mine" / "W056" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        generate(tmp_path / "mine", days=1, hours=0.1, progress=False)
    assert (tmp_path / "mine" / "W056" / "notes.txt").exists()


def test_cli_writes_the_layout(tmp_path, capsys):
    main(["--out", str(tmp_path), "--nodes", "W056", "--start", "2023-05-18", "--days", "1", "--hours", "0.25",
          "--interval-min", "5", "--seed", "0", "--fault-rate", "0", "--workers", "1"])
    assert '"captures": 24' in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "W056").iterdir()} >= {"rgb", "thermal", "sage_meta", "truth.parquet",
                                                                 "faults.csv"}


def _horizon_views():
    """{horizon preset: its view at W056 (small size)} for the presets whose frame shows trees or roofs."""
    views = {p: preset_view(p, 384, 256, 112, 84, node_key("W056")) for p in HORIZON_PRESETS}
    return {p: v for p, v in views.items() if v.ground_thermal is not None}


def test_horizon_row_sees_obstructions_warm_and_dark_and_truth_leaves_them_out(tmp_path):
    views = _horizon_views()
    assert views and all(preset_view(p, 384, 256, 112, 84, node_key("W056")).ground_thermal is None
                         for p in SKY_PRESETS)  # the sky row clears every tree
    for cover in (0.0, 1.0):  # local midnight and 10:00 (sun up), both rows
        generate(tmp_path / str(cover), days=1, hours=13, interval_min=600, start="2023-06-01", cloud_cover=cover,
                 fault_rate=0.0, rows=("sky", "horizon"), progress=False)
    node = tmp_path / "0.0" / "W056"
    truth = pd.read_parquet(node / "truth.parquet")
    assert list(truth.position[:16]) == [*SKY_PRESETS, *HORIZON_PRESETS] and len(truth) == 32
    assert (np.diff(truth.ts_ns[:16]) > 2.5e9).all()  # one preset every ~3 s, sky row first
    overcast = pd.read_parquet(tmp_path / "1.0" / "W056" / "truth.parquet")
    assert (truth.cloud_fraction == 0).all() and (overcast.cloud_fraction == 1).all()  # obstructions not counted
    for r in truth[truth.position.isin(list(views))].itertuples():
        ground = views[r.position].ground_thermal > 0
        thermal = read_thermal_csv(node / "thermal" / f"{r.ts_ns}-{thermal_name(r.position, width=112, height=84)}")
        assert thermal[ground].min() > 0 and thermal[~ground].max() < -9  # a June night and day: trees are warm
        flagged = cloud_mask(thermal, centre_deg=preset_elevation_deg(r.position))
        assert flagged[ground].all() and not flagged[~ground].any()  # the clear-sky rule calls them cloud
    day = overcast[(overcast.sun_elevation > 30) & overcast.position.isin(list(views))]
    assert len(day)
    for r in day.itertuples():  # under a white-grey deck, trees and roofs are dark
        img = np.asarray(Image.open(tmp_path / "1.0" / "W056" / "rgb" / f"{r.ts_ns}-768x256_position{r.position}.jpg")
                         .convert("L"), np.float32)[:, :384]
        shade = np.asarray(Image.fromarray(views[r.position].ground_optical).resize((384, 256), Image.NEAREST))
        inside = np.asarray(Image.fromarray((shade > 0).astype(np.float32)).resize((384, 256)).filter(
            ImageFilter.MinFilter(5))) > 0.99
        assert inside.sum() > 50 and img[inside].mean() < 0.4 * img[shade == 0].mean()


def test_rows_option_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--rows", "sky,ground", "--days", "1", "--hours", "0.1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "sky, horizon" in err
