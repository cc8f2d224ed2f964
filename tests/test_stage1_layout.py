"""The stage-1 layout probe's target reads each frame by its own row's elevations (horizon frames look lower)."""

import numpy as np

from data.sky import clear_sky_celsius, row_elevation_deg
from stage1_jea.baselines import region_cloud_fraction


def test_clear_horizon_frame_is_clear_only_when_read_at_its_own_elevation(tmp_path):
    s = 16
    horizon_clear = np.repeat(clear_sky_celsius(row_elevation_deg(s, centre_deg=32.0))[:, None], s, axis=1)
    sky_clear = np.repeat(clear_sky_celsius(row_elevation_deg(s))[:, None], s, axis=1)
    np.save(tmp_path / "thermal.npy", np.stack([sky_clear, horizon_clear]).astype(np.float16))
    rows = np.array([0, 1])
    by_row = region_cloud_fraction(tmp_path, rows, grid=2, positions=np.array([1, 2]))
    np.testing.assert_array_equal(by_row, 0.0)
    as_sky = region_cloud_fraction(tmp_path, rows, grid=2)
    assert as_sky[0].max() == 0.0 and as_sky[1, 2:].min() > 0.25  # the sky row's rule calls low clear sky cloud
