"""Splits per location period: a node that moved has train, val and test days in each place."""

import pandas as pd

from data.prepare.run import assign_splits  # still importable from its old home
from data.prepare.splits import split_by_location


def moved_node_index(days_per_place=10):
    dates = pd.date_range("2023-04-01", periods=2 * days_per_place, freq="D").strftime("%Y-%m-%d")
    place = [(41.7, -87.98)] * days_per_place + [(32.7, -117.2)] * days_per_place  # Argonne, then San Diego
    return pd.DataFrame({"vsn": "W056", "local_date": list(dates) * 2, "lat": [p[0] for p in place] * 2,
                         "lon": [p[1] for p in place] * 2})


def test_a_moved_node_gets_days_of_every_split_in_each_location():
    index = moved_node_index()
    split = split_by_location(index)
    for _, rows in index.assign(split=split).groupby(["lat", "lon"]):
        assert set(rows["split"]) == {"train", "val", "test"}
        assert (rows.groupby("local_date")["split"].nunique() == 1).all()
    # The date-only rule puts one place's days into a split the other place never gets, for this seed.
    by_date = index["local_date"].map(assign_splits(index["local_date"]))
    assert any(set(by_date[index["lat"] == lat]) != {"train", "val", "test"} for lat in (41.7, 32.7))


def test_a_short_location_period_falls_back_to_the_rule_over_all_dates():
    index = moved_node_index(days_per_place=10).iloc[:12]  # 10 days at Argonne, 2 in San Diego
    split = split_by_location(index)
    short = index["lat"] == 32.7
    assert (split[short] == index["local_date"].map(assign_splits(index["local_date"]))[short]).all()
