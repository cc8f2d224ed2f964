"""Sky-camera geometry and the clear-sky thermal rule shared by the synthetic sky and data preparation.

The numbers are assumptions about a typical install (absolute azimuth and tilt depend on the mount, see
SAGE_DATA.md §3); they are parameters, not facts. `cloud_mask` is the documented rule behind the
`cloud_fraction` column of the prepared index: a pixel is cloud when it is more than `margin_c` warmer than
the clear-sky brightness temperature expected at its elevation angle.
"""

from __future__ import annotations

import numpy as np

SKY_ELEVATION_DEG = 50.0  # elevation of the image centre for the sky row (tilt 0) of presets
# Image-centre elevation per tilt: the horizon row (tilt 1) sits half a field of view lower and sees 14–50°
# (SAGE_DATA.md §8: it looks farther upwind); the sky row sees 32–68°.
TILT_ELEVATION_DEG = (SKY_ELEVATION_DEG, SKY_ELEVATION_DEG - 18.0)
THERMAL_VFOV_DEG = 36.0  # vertical field of view of the thermal sensor (= the default optical crop)
PRESET_AZIMUTH_STEP_DEG = 45.0  # 8 azimuth columns
CLOUD_MARGIN_C = 8.0

# Clear-sky brightness temperature: coldest at the zenith, warming toward the horizon (longer, moister path).
CLEAR_ZENITH_C = -45.0
CLEAR_HORIZON_C = -10.0


def preset_azimuth_deg(position: int, *, north_offset_deg: float = 0.0) -> float:
    """Azimuth (degrees clockwise from north) that preset `position` faces: column (p-1)//4 × 45°."""
    return ((position - 1) // 4 * PRESET_AZIMUTH_STEP_DEG + north_offset_deg) % 360.0


def preset_elevation_deg(position: int) -> float:
    """Elevation of the image centre of preset `position` (sky and horizon rows only)."""
    tilt = (position - 1) % 4
    if tilt >= len(TILT_ELEVATION_DEG):
        raise ValueError(f"preset {position} is below the horizon row (tilt {tilt}); no elevation modelled")
    return TILT_ELEVATION_DEG[tilt]


def centre_elevation(position: int | None) -> float:
    """Image-centre elevation the cloud rule assumes for a preset (the sky row's where none is modelled:
    presets below the horizon row, files without a position)."""
    if isinstance(position, int) and position > 0 and (position - 1) % 4 < len(TILT_ELEVATION_DEG):
        return preset_elevation_deg(position)
    return SKY_ELEVATION_DEG


def row_elevation_deg(n_rows: int, *, centre_deg: float = SKY_ELEVATION_DEG,
                      vfov_deg: float = THERMAL_VFOV_DEG) -> np.ndarray:
    """Elevation angle of each image row (row 0 = top of the image = highest elevation)."""
    frac = (np.arange(n_rows) + 0.5) / n_rows  # 0 at the top, 1 at the bottom
    return centre_deg + vfov_deg * (0.5 - frac)


def clear_sky_celsius(elevation_deg: np.ndarray | float) -> np.ndarray:
    """Expected clear-sky brightness temperature (°C) at an elevation angle."""
    airmass_like = 1.0 - np.sin(np.radians(np.clip(elevation_deg, 1.0, 90.0)))
    return CLEAR_ZENITH_C + (CLEAR_HORIZON_C - CLEAR_ZENITH_C) * airmass_like**1.5


def cloud_mask(thermal_c: np.ndarray, *, margin_c: float = CLOUD_MARGIN_C, **geometry) -> np.ndarray:
    """Boolean (H, W): pixels warmer than clear sky + margin at their row's elevation."""
    h = thermal_c.shape[-2]
    threshold = clear_sky_celsius(row_elevation_deg(h, **geometry)) + margin_c
    return thermal_c > threshold[:, None]


def cloud_fraction(thermal_c: np.ndarray, **kwargs) -> float:
    return float(cloud_mask(thermal_c, **kwargs).mean())
