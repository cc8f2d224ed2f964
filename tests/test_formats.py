"""Mobotix file names, the thermal field-of-view box and the clear-sky cloud rule."""

from __future__ import annotations

import numpy as np
import pytest

from data.formats import (
    parse_mobotix_name,
    rgb_name,
    split_original_name,
    split_ts_name,
    thermal_fov_box,
    thermal_name,
    thermal_plot_name,
)
from data.sky import clear_sky_celsius, cloud_fraction, row_elevation_deg


@pytest.mark.parametrize("name, kind, position, mode", [
    ("6144x2048_position17.jpg", "rgb", 17, "preset"),
    ("right_336x252_14bit.thermal.celsius_position17.csv", "thermal", 17, "preset"),
    ("right_336x252_14bit.thermal.celsius_plot_position5.jpg", "thermal_plot", 5, "preset"),
    ("right_336x252_14bit.thermal.uint_position5.csv", "thermal_uint", 5, "preset"),
    ("right_336x252_14bit.thermal_position5.raw", "thermal_raw", 5, "preset"),
    ("right_336x252_14bit.thermal.celsius_position5.nc", "thermal_nc", 5, "preset"),
    ("6144x2048.jpg", "rgb", None, "none"),
    ("right_336x252_14bit.thermal.celsius.csv", "thermal", None, "none"),
    ("6144x2048_positionNEG.jpg", "rgb", "NEG", "direction"),
    ("6144x2048_2024-08-07T151627_Pt1-right-S4xD500ms_Img2.jpg", "rgb", "Pt1", "custom"),
    ("notes.txt", "unknown", None, "none"),
])
def test_parse_mobotix_name(name, kind, position, mode):
    parsed = parse_mobotix_name(name)
    assert (parsed.kind, parsed.position, parsed.mode) == (kind, position, mode)


def test_plot_jpg_is_never_an_rgb_image():
    parsed = parse_mobotix_name(thermal_plot_name(9))
    assert parsed.kind != "rgb" and "plot" in parsed.skip_reason


def test_builders_round_trip_through_the_parser():
    assert parse_mobotix_name(rgb_name(768, 256, 13)).position == 13
    assert parse_mobotix_name(thermal_name(29, width=112, height=84)).kind == "thermal"


def test_stored_name_prefixes():
    assert split_ts_name("1723046341679692577-6144x2048_position17.jpg") == (
        1723046341679692577, "6144x2048_position17.jpg")
    assert split_ts_name("6144x2048_position17.jpg") is None
    assert split_original_name("rgb_20230521-095736_W057_6144x2048_position10.jpg") == (
        "20230521-095736", "W057", "6144x2048_position10.jpg")
    assert split_original_name("20230521-095736_W057_right_336x252_14bit.thermal.celsius_position10.csv")[1] == "W057"


def test_fov_box_is_the_original_centre_crop():
    # H/1.1 = 1861.8 -> 1862 rows; x 4/3 -> 2482 columns, centred in the 3072-wide optical half.
    assert thermal_fov_box(3072, 2048) == (295, 93, 295 + 2482, 93 + 1862)


def test_clear_sky_is_coldest_overhead_and_cloud_rule_counts_warm_pixels():
    elev = row_elevation_deg(6)
    assert np.all(np.diff(elev) < 0)  # top row is highest
    clear = clear_sky_celsius(elev)
    assert np.all(np.diff(clear) > 0)  # warmer toward the horizon
    img = np.repeat(clear[:, None], 10, axis=1)
    assert cloud_fraction(img) == 0.0
    img[:3, :5] = 0.0  # a warm (cloudy) patch over 15 of 60 pixels
    assert cloud_fraction(img) == pytest.approx(15 / 60)


def test_rows_name_their_presets_in_scan_order():
    from data.formats import HORIZON_PRESETS, SKY_PRESETS, parse_rows, preset_column, preset_row, row_presets

    assert row_presets() == SKY_PRESETS
    assert row_presets(parse_rows("horizon, sky")) == SKY_PRESETS + HORIZON_PRESETS
    assert [preset_row(p) for p in (1, 2, 3, 4, 30)] == ["sky", "horizon", None, None, "horizon"]
    assert [preset_column(p) for p in (1, 2, 29, 30)] == [0, 0, 7, 7]
    with pytest.raises(ValueError, match="sky, horizon"):
        parse_rows("sky,ground")


def test_skyline_is_per_site_and_reaches_into_the_horizon_row_only():
    from data.sky import THERMAL_VFOV_DEG, TILT_ELEVATION_DEG
    from data.synthetic.layout import node_key
    from data.synthetic.site import obstructed, skyline_deg

    az = np.arange(0, 360, 0.5)
    a, b = skyline_deg(node_key("W056"), az), skyline_deg(node_key("W0A1"), az)
    assert not np.allclose(a, b)
    sky_bottom = TILT_ELEVATION_DEG[0] - THERMAL_VFOV_DEG / 2
    horizon_bottom = TILT_ELEVATION_DEG[1] - THERMAL_VFOV_DEG / 2
    assert a.max() < sky_bottom and (a > horizon_bottom).any()
    assert obstructed(node_key("W056"), -1.0, az).all() and not obstructed(node_key("W056"), 40.0, az).any()
