"""The view-resolution ceilings study (stage2_forecast.ceilings): points land in the view the wind brings them
from, unseen points take the fill, and the scans are the loops the given minutes before."""

import math

import numpy as np
import pandas as pd

from stage2_forecast.ceilings import LAGS_MIN, PRESETS, route, scans

RING = 1 / math.tan(math.radians(50.0))  # a sky view's centre, ground offset per metre of height


def one_view(column: int, *, views: int = 16) -> np.ndarray:
    """(1, K, views): 1 at the sky view of `column` at every scan, 0 elsewhere."""
    v = np.zeros((1, len(LAGS_MIN), views))
    v[0, :, column] = 1.0
    return v


def test_without_wind_a_view_is_itself():
    out = route(one_view(0, views=8), np.array([0.0]), np.zeros((1, 2)), np.array([1000.0]), np.array([0.5]),
                horizon_min=5.0)
    assert out[0] == 1.0


def test_clouds_come_from_the_view_upwind_and_no_other():
    speed = 2 * RING * 1000.0 / 300.0  # northward, twice the ring radius in 5 min: the south view's sky
    south = one_view(4)  # column 4 faces 180°
    north = route(south, np.array([0.0]), np.array([[0.0, speed]]), np.array([1000.0]), np.array([0.0]),
                  horizon_min=5.0, lags_min=(0.0,))
    east = route(south, np.array([90.0]), np.array([[0.0, speed]]), np.array([1000.0]), np.array([0.0]),
                 horizon_min=5.0, lags_min=(0.0,))
    assert north[0] > 0.5 and east[0] < 0.05
    # the height turns the wind into a displacement: 4 × as high, the same wind brings only nearby sky
    assert route(south, np.array([0.0]), np.array([[0.0, speed]]), np.array([4000.0]), np.array([0.0]),
                 horizon_min=5.0, lags_min=(0.0,))[0] < 0.05


def test_points_no_scan_saw_take_the_fill():
    unseen = np.full((2, len(LAGS_MIN), 16), np.nan)
    out = route(unseen, np.array([0.0, 135.0]), np.zeros((2, 2)), np.full(2, 1000.0), np.array([0.3, 0.7]),
                horizon_min=5.0)
    np.testing.assert_allclose(out, [0.3, 0.7])


def test_scans_are_the_loops_the_lags_before_and_none_across_a_gap():
    start = pd.Timestamp("2023-06-01 12:00", tz="UTC")
    loops = {1: 0, 2: 5, 3: 20}  # loop 3 comes 15 min after loop 2: no scan 5 or 10 min before it
    rows = [{"loop_num": n, "position": p, "timestamp": start + pd.Timedelta(minutes=m, seconds=3 * i),
             "cloud_fraction": n + p / 100} for n, m in loops.items() for i, p in enumerate(PRESETS)]
    truth = pd.DataFrame(rows)
    got = scans(truth, pd.DataFrame({"loop_num": [2, 3]}), "cloud_fraction")  # (2, K, 16)
    np.testing.assert_allclose(got[0, 0], [2 + p / 100 for p in PRESETS])
    np.testing.assert_allclose(got[0, 1], [1 + p / 100 for p in PRESETS])
    assert np.isnan(got[0, 2]).all() and np.isnan(got[1, 1:]).all()
    np.testing.assert_allclose(got[1, 0], [3 + p / 100 for p in PRESETS])
