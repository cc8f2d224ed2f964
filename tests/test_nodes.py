"""Tests for `python -m data.sage.nodes` (GPS history → registry periods) against the SAGE double."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.sage import nodes
from data.sage.registry import DEFAULT_REGISTRY, load_registry, node_period
from tests.sage_double import SageDouble

LEMONT, SAN_DIEGO = (41.7014, -87.9952), (32.7157, -117.1611)


def track(days: pd.DatetimeIndex, where, seed: int):
    """Hourly fixes with ~50 m of GPS noise."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(days[0], days[-1] + pd.Timedelta(hours=23), freq="h")
    return [(t, where[0] + rng.normal(0, 5e-4), where[1] + rng.normal(0, 5e-4)) for t in hours]


@pytest.fixture
def moved():
    """W056 GPS: Lemont 2023-05-10..19, no fix on the 20th (in transit), San Diego 2023-05-21..30."""
    gps = track(pd.date_range("2023-05-10", "2023-05-19", tz="UTC"), LEMONT, 0) + \
        track(pd.date_range("2023-05-21", "2023-05-30", tz="UTC"), SAN_DIEGO, 1)
    with SageDouble(gps={"W056": gps}, manifest={"W099": {"gps_lat": 46.0, "gps_lon": 7.5}}, lifetime_s=60) as d:
        yield d


def update(d, registry: Path, *extra, vsn="W056"):
    nodes.main(["update", "--vsn", vsn, "--start", "2023-05-08", "--end", "2023-06-01", "--endpoint",
                f"{d.url}/api/v1/query", "--manifest-url", f"{d.url}/manifests", "--registry", str(registry),
                *extra])
    return load_registry(registry)


def test_move_gives_two_periods_with_known_zones(moved, tmp_path):
    reg = tmp_path / "nodes.json"
    shutil.copy(DEFAULT_REGISTRY, reg)
    periods = update(moved, reg, "--replace")["W056"]
    assert len(periods) == 2
    a, b = periods
    assert (a.start, a.end, b.start, b.end) == (pd.Timestamp("2023-05-10", tz="UTC"),
                                                pd.Timestamp("2023-05-21", tz="UTC"),
                                                pd.Timestamp("2023-05-21", tz="UTC"), None)
    assert nodes.distance_km(a.lat, a.lon, *LEMONT) < 0.5 and nodes.distance_km(b.lat, b.lon, *SAN_DIEGO) < 0.5
    assert (a.tz, b.tz) == ("America/Chicago", "America/Los_Angeles")  # taken from the nearby old periods
    assert node_period("W056", "2023-05-25T12:00", registry=reg).tz == "America/Los_Angeles"
    assert json.loads(reg.read_text())["_comment"]  # the file's comment survives the rewrite
    again = update(moved, reg)["W056"]  # re-running changes nothing
    assert again == periods


def test_hand_written_periods_are_kept(moved, tmp_path, capsys):
    reg = tmp_path / "nodes.json"
    hand = {"from": "2023-05-25T00:00:00Z", "to": None, "lat": 32.0, "lon": -117.0, "elevation_m": 5.0,
            "tz": "America/Los_Angeles", "source": "site visit"}
    reg.write_text(json.dumps({"W056": [hand]}))
    periods = update(moved, reg)["W056"]
    assert [(p.start, p.end) for p in periods] == [
        (pd.Timestamp("2023-05-10", tz="UTC"), pd.Timestamp("2023-05-21", tz="UTC")),
        (pd.Timestamp("2023-05-21", tz="UTC"), pd.Timestamp("2023-05-25", tz="UTC")),
        (pd.Timestamp("2023-05-25", tz="UTC"), None)]
    assert periods[2].to_json() == hand
    # 80 km from the hand site: the zones come from the offline boundary lookup (daylight saving included)
    assert (periods[0].tz, periods[1].tz) == ("America/Chicago", "America/Los_Angeles")
    out = capsys.readouterr().out
    assert "kept the hand-written one" in out
    assert "site visit" in out  # `show` printed after the update
    replaced = update(moved, reg, "--replace", "--tz", "America/Chicago")["W056"]
    assert len(replaced) == 2 and "site visit" not in {p.source for p in replaced}


def test_zone_lookup_is_offline_and_keeps_daylight_saving():
    assert nodes.guess_tz(*LEMONT, [], None, 5.0) == "America/Chicago"
    summer = pd.Timestamp("2023-07-01T12:00Z").tz_convert(nodes.guess_tz(*SAN_DIEGO, [], None, 5.0))
    assert summer.utcoffset() == pd.Timedelta(hours=-7)  # PDT; a fixed Etc/GMT+8 would say -8
    assert nodes.guess_tz(*LEMONT, [], "Europe/Zurich", 5.0) == "Europe/Zurich"  # --tz wins over the lookup


def test_manifest_fallback_and_show(moved, tmp_path, capsys):
    reg = tmp_path / "nodes.json"
    reg.write_text("{}")
    (p,) = update(moved, reg, "--tz", "Europe/Zurich", vsn="W099")["W099"]
    assert (p.start, p.end, p.lat, p.lon, p.tz) == (None, None, 46.0, 7.5, "Europe/Zurich")
    assert p.source.startswith("manifest")
    nodes.main(["show", "W099", "--registry", str(reg)])
    assert "Europe/Zurich" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        update(moved, reg, vsn="W404")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("sagecast-nodes: error: W404: no GPS history")


def test_minus_cuts_periods():
    p = nodes.Period(None, None, 1.0, 2.0, 0.0, "UTC", "sys.gps")
    cut = nodes.Period(pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2023-02-01", tz="UTC"), 0, 0, 0, "UTC", "")
    left, right = nodes.minus(p, [cut])
    assert (left.start, left.end, right.start, right.end) == (None, cut.start, cut.end, None)
    assert nodes.minus(cut, [p]) == []
