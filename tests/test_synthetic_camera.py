"""The synthetic camera and cheap days: sun aureole, cloud bases and silver linings, aerosol haze, metering, white
balance, `--daylight-only` and `--size tiny`.

Run: `.venv/bin/python -m pytest tests/test_synthetic_camera.py -q`
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.sky import preset_elevation_deg
from data.synthetic.camera import EXPOSURE_TARGET, LUMA, exposure_gain, white_balance
from data.synthetic.generate import SIZES, generate, main
from data.synthetic.render import _optical, aerosol_turbidity, preset_view

VIEW = preset_view(9, 384, 256, 112, 84)


def _layers(op_low: float, thick_low: float) -> tuple[dict, dict]:
    shape = VIEW.optical_hw
    op = {"low": np.full(shape, op_low, np.float32), "high": np.zeros(shape, np.float32)}
    thick = {"low": np.full(shape, thick_low, np.float32), "high": np.zeros(shape, np.float32)}
    return op, thick


def _luma(colours: np.ndarray) -> np.ndarray:
    return colours @ LUMA


def _centre(img: np.ndarray) -> np.ndarray:
    """The middle third of the frame in both directions (within ~10° of where the view points)."""
    h, w = img.shape[:2]
    return img[h // 3: 2 * h // 3, w // 3: 2 * w // 3]


def _look(op_low: float, thick_low: float, *, facing: bool, turbidity: float = 0.3) -> np.ndarray:
    """Radiance of VIEW with the sun 10° above its centre, in front of it or behind the camera."""
    sun_el = preset_elevation_deg(9) + 10.0
    sun_az = VIEW.azimuth if facing else VIEW.azimuth + 180.0
    return _optical(VIEW, *_layers(op_low, thick_low), sun_el, sun_az, turbidity)


def test_circumsolar_sky_is_brighter_and_whiter_facing_the_sun():
    toward, away = _look(0.0, 0.0, facing=True), _look(0.0, 0.0, facing=False)
    assert _luma(_centre(toward)).mean() > 2.5 * _luma(_centre(away)).mean()
    blueness = [(_centre(x)[..., 2] / _centre(x)[..., 0]).mean() for x in (toward, away)]
    assert blueness[0] < 0.7 * blueness[1]  # the aureole has the sun's colour, not the sky's blue


def test_thick_cloud_base_is_darker_than_thin_and_thin_edges_glow_toward_the_sun():
    thin, thick = _look(1.0, 0.0, facing=False), _look(1.0, 1.0, facing=False)
    assert _luma(thick).mean() < 0.4 * _luma(thin).mean()
    assert np.ptp(thick / thick.mean(axis=-1, keepdims=True)) < 0.05  # a base is grey, not blue
    edge_toward, edge_away = _look(0.3, 0.0, facing=True), _look(0.3, 0.0, facing=False)
    assert _luma(_centre(edge_toward)).mean() > 2 * _luma(_centre(edge_away)).mean()  # silver lining


def test_turbid_days_are_milkier_and_turbidity_drifts_over_days():
    clear, turbid = (_look(0.0, 0.0, facing=False, turbidity=t) for t in (0.0, 1.0))
    assert (turbid[..., 2] / turbid[..., 0]).mean() < 0.75 * (clear[..., 2] / clear[..., 0]).mean()
    hours = np.arange(0, 30 * 24, 1.0)
    series = np.array([aerosol_turbidity(0, 77, h * 3600.0) for h in hours])
    assert series.min() >= 0.0 and series.max() <= 1.0 and np.ptp(series) > 0.6
    assert np.abs(np.diff(series)).max() < 0.1  # hour to hour it hardly moves: it is the day that differs
    assert aerosol_turbidity(0, 77, 5e5) == aerosol_turbidity(0, 77, 5e5) != aerosol_turbidity(1, 77, 5e5)


def test_metering_counts_a_saturated_sun_as_white_and_white_balance_is_partial():
    frame = np.full((40, 60, 3), 0.2, np.float32)
    frame[:4, :6] = 50.0  # the sun: far beyond full scale
    gain = exposure_gain(frame)
    assert np.isclose(np.minimum((frame @ LUMA) * gain, 1.0).mean(), EXPOSURE_TARGET, atol=0.01)
    assert gain > 1.5  # a mean of true radiance (1.7) would have darkened the frame instead
    blue = np.broadcast_to(np.array([0.2, 0.4, 0.8], np.float32), (8, 8, 3))
    r, g, b = white_balance(blue)
    assert g == 1.0 and 1.0 < r < 1.3 and 1 / 1.3 < b < 1.0
    assert ((blue * white_balance(blue)).mean((0, 1)) @ [1, 0, -1]) < 0  # still blue after balancing
    assert np.allclose(white_balance(np.full((4, 4, 3), 0.5, np.float32)), 1.0)


@pytest.fixture(scope="module")
def full_and_daylight(tmp_path_factory):
    """W056's first local day at 30-minute loops, all loops and daylight only (tiny frames: only bytes matter)."""
    root = tmp_path_factory.mktemp("daylight")
    kw = dict(start="2023-05-18", days=1, interval_min=30, size="tiny", fault_rate=0.0, progress=False)
    generate(root / "full", **kw)
    generate(root / "day", daylight_only=True, **kw)
    return root / "full" / "W056", root / "day" / "W056"


def test_daylight_only_keeps_the_lit_captures_byte_for_byte(full_and_daylight):
    full, day = full_and_daylight
    truth_full, truth_day = pd.read_parquet(full / "truth.parquet"), pd.read_parquet(day / "truth.parquet")
    assert truth_day.sun_elevation.min() >= 0.0 and truth_full.sun_elevation.min() < -10
    lit = truth_full[truth_full.groupby("loop_num").sun_elevation.transform("min") >= 0.0]
    assert 0 < len(truth_day) < len(truth_full)
    pd.testing.assert_frame_equal(truth_day, lit.reset_index(drop=True))
    files = sorted(p.relative_to(day) for p in day.glob("*/*") if p.parent.name in ("rgb", "thermal"))
    assert len(files) == 2 * len(truth_day)
    assert all((day / f).read_bytes() == (full / f).read_bytes() for f in files)
    records = pd.concat([pd.read_csv(p) for p in sorted((day / "sage_meta").glob("*.csv"))])
    assert len(records) == len(files)
    summary = pd.read_json(day.parent / ".complete", typ="series")
    full_summary = pd.read_json(full.parent / ".complete", typ="series")
    assert summary["captures"] == len(truth_day) and summary["files"] == len(files)
    for key in ("local_dates", "start_ns", "end_ns"):  # the day is still the whole local day
        assert summary["nodes"]["W056"][key] == full_summary["nodes"]["W056"][key]


def test_tiny_frames_are_valid_sage_files_that_prepare_reads(full_and_daylight, tmp_path):
    from data.prepare.run import prepare

    _, day = full_and_daylight
    width, height, tw, th = SIZES["tiny"]
    assert width == 3 * height and tw * 3 == th * 4  # optical half 3:2, thermal 4:3, as the camera's
    report = prepare(day.parent, tmp_path / "prep", size=32, workers=1, progress=False)
    assert report["pairs"] == len(pd.read_parquet(day / "truth.parquet")) and report["skipped_files"] == 0
    rgb = np.load(tmp_path / "prep" / "rgb.npy", mmap_mode="r")
    assert rgb.shape[1:] == (32, 32, 3) and rgb.std() > 5


def test_cli_takes_daylight_only(tmp_path, capsys):
    main(["--out", str(tmp_path / "raw"), "--days", "1", "--hours", "9", "--interval-min", "60", "--size", "tiny",
          "--fault-rate", "0", "--workers", "1", "--daylight-only"])
    truth = pd.read_parquet(tmp_path / "raw" / "W056" / "truth.parquet")
    assert len(truth) > 0 and truth.sun_elevation.min() >= 0.0 and '"captures"' in capsys.readouterr().out
