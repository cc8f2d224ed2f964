"""Node registry: W056's move, day/night against astral's sunrise and sunset, clear errors, SAGECAST_NODES.

Run: `.venv/bin/python -m pytest tests/test_registry.py -q`
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from astral import Observer
from astral.sun import sun

from data import RegistryError, is_day, local_date, node_location, node_period, sun_elevation

LEMONT = (41.70, -87.99)
SAN_DIEGO = (32.70, -117.20)
MINUTE = pd.Timedelta(minutes=1)


def _sun_times(lat, lon, tz, date):
    """Sunrise and sunset of the local `date` (UTC Timestamps), by astral directly from the coordinates."""
    times = sun(Observer(latitude=lat, longitude=lon), date=date, tzinfo=ZoneInfo(tz))
    return pd.Timestamp(times["sunrise"]).tz_convert("UTC"), pd.Timestamp(times["sunset"]).tz_convert("UTC")


def test_w056_location_before_and_after_its_move():
    assert node_location("W056", "2023-05-19T23:59:59Z") == LEMONT
    assert node_location("w056", pd.Timestamp("2023-05-20T00:00:00Z")) == SAN_DIEGO
    assert node_location("W056", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)) == SAN_DIEGO
    assert node_period("W056", "2023-05-01").tz == "America/Chicago"
    assert node_period("W056", "2023-06-01").tz == "America/Los_Angeles"
    # 03:00Z on the 20th: already in San Diego, where it is 20:00 on the 19th (Chicago would say the 19th too,
    # but 22:00); 08:00Z on the 20th is 01:00 on the 20th in San Diego.
    assert local_date("W056", "2023-05-20T03:00Z") == dt.date(2023, 5, 19)
    assert local_date("W056", "2023-05-20T08:00Z") == dt.date(2023, 5, 20)


@pytest.mark.parametrize("place, tz, date, when_utc", [
    # The 18th: Lemont's sunset on the 19th (01:08Z on the 20th) already falls after the move.
    (LEMONT, "America/Chicago", dt.date(2023, 5, 18), "2023-05-18T10:30Z"),  # ~05:30 CDT sunrise, ~20:07 sunset
    (SAN_DIEGO, "America/Los_Angeles", dt.date(2023, 5, 21), "2023-05-21T12:47Z"),  # ~05:47 PDT, ~19:45 PDT
])
def test_is_day_flips_at_astral_sunrise_and_sunset(place, tz, date, when_utc):
    sunrise, sunset = _sun_times(*place, tz, date)
    assert abs(sunrise - pd.Timestamp(when_utc)) < 10 * MINUTE  # the almanac agrees with astral
    assert pd.Timedelta(hours=13.5) < sunset - sunrise < pd.Timedelta(hours=15)  # a May day
    vsn = "W056"
    assert node_location(vsn, sunrise) == place and node_location(vsn, sunset) == place
    # astral's sunrise/sunset put the sun's upper limb on the horizon (centre ≈ 0.3° below with refraction):
    # a few minutes either side, the centre is clearly below or above it.
    assert not is_day(vsn, sunrise - 2 * MINUTE) and is_day(vsn, sunrise + 10 * MINUTE)
    assert is_day(vsn, sunset - 10 * MINUTE) and not is_day(vsn, sunset + 2 * MINUTE)
    assert -1.0 < sun_elevation(vsn, sunrise) < 0.0
    noon = sunrise + (sunset - sunrise) / 2
    assert sun_elevation(vsn, noon) > 60 and is_day(vsn, sunset + 20 * MINUTE, min_elevation=-6.0)


def test_is_day_uses_the_location_at_that_time():
    # 2023-05-20T02:00Z: the sun has set in Lemont (~01:12Z) but not in San Diego (~02:47Z), where W056 is.
    assert is_day("W056", "2023-05-20T02:00Z")
    assert sun_elevation("W056", "2023-05-20T02:00Z") > 5


def test_unknown_node_error_names_vsn_and_time():
    with pytest.raises(RegistryError, match=r"W999.*2023-05-20T00:00:00\+00:00"):
        node_location("W999", "2023-05-20T00:00Z")


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_sagecast_nodes_override_and_time_outside_every_period(tmp_path, monkeypatch):
    reg = _write(tmp_path / "nodes.json", {
        "_comment": "test",
        "X001": [{"from": "2023-01-01T00:00:00Z", "to": "2023-02-01T00:00:00Z", "lat": 10.0, "lon": 20.0,
                  "tz": "UTC", "source": "test"},
                 {"from": "2023-03-01T00:00:00Z", "to": None, "lat": -10.0, "lon": -20.0, "elevation_m": 5,
                  "tz": "Europe/Berlin"}]})
    monkeypatch.setenv("SAGECAST_NODES", str(reg))
    assert node_location("X001", "2023-01-15") == (10.0, 20.0)
    assert node_location("x001", "2030-01-01") == (-10.0, -20.0)
    with pytest.raises(RegistryError, match=r"X001.*2023-02-15T00:00:00\+00:00"):
        node_location("X001", "2023-02-15")
    with pytest.raises(RegistryError, match=r"X001.*2022-12-31T23:59:59\+00:00"):
        is_day("X001", "2022-12-31T23:59:59Z")
    with pytest.raises(RegistryError, match="W056"):  # the shipped registry is not consulted
        node_location("W056", "2023-05-20")


def test_malformed_or_missing_registry_is_a_clear_error(tmp_path, monkeypatch):
    bad = _write(tmp_path / "bad.json", {"X002": [{"from": None, "to": None, "lon": 1.0, "tz": "UTC"}]})
    monkeypatch.setenv("SAGECAST_NODES", str(bad))
    with pytest.raises(RegistryError, match="X002 period 0 is malformed"):
        node_location("X002", "2023-01-01")
    monkeypatch.setenv("SAGECAST_NODES", str(tmp_path / "absent.json"))
    with pytest.raises(RegistryError, match="does not exist"):
        node_location("X002", "2023-01-01")
