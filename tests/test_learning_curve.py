"""Learning curve from nested training sets: points sorted by days, intervals kept, a figure, one-line errors."""

import json

import pytest

from sagecast_common.cli import UserError
from stage2_forecast.learning_curve import curve, main


def scores(skill, room=None):
    variants = {m: {hk: {"skill_vs_persistence": skill + d, "skill_ci": [skill + d - 0.1, skill + d + 0.1]}
                    for hk, d in (("5", 0.0), ("15", -0.05))} for m in ("detr", "ridge", "persistence")}
    out = {"horizons_min": [5, 15], "variants": variants}
    if room is not None:
        out["headroom"] = {"available": True, "models": {"detr": {hk: {"headroom": room, "headroom_ci": [0, room]}
                                                                 for hk in ("5", "15")}}}
    return out


def test_points_follow_training_days_and_carry_intervals_and_headroom():
    lc = curve([scores(0.3, room=0.4), scores(0.1)], [40, 10])
    assert lc["train_days"] == [10, 40]
    detr = lc["methods"]["detr"]["15"]
    assert [p["days"] for p in detr] == [10, 40] and [p["skill"] for p in detr] == pytest.approx([0.05, 0.25])
    assert detr[1]["skill_ci"] == pytest.approx([0.15, 0.35]) and detr[1]["headroom"] == 0.4
    assert detr[0]["headroom"] is None and "persistence" not in lc["methods"]


def test_cli_writes_the_figure_and_the_record_last_and_refuses_mismatched_lists(tmp_path, capsys):
    files = []
    for i, s in enumerate((scores(0.1), scores(0.2))):
        files.append(tmp_path / f"s{i}.json")
        files[-1].write_text(json.dumps(s))
    main(["--scores", *map(str, files), "--days", "10", "20", "--out", str(tmp_path / "lc")])
    assert json.loads((tmp_path / "lc" / "learning_curve.json").read_text())["train_days"] == [10, 20]
    assert (tmp_path / "lc" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        main(["--scores", str(files[0]), "--days", "10", "20", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "one --days value per --scores file" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "learning_curve.json").exists()


def test_all_reads_the_training_days_from_the_evaluation_and_duplicates_are_refused():
    places = {"W056@a": {"train": 25, "val": 2, "test": 9}, "W056@b": {"train": 15, "val": 1, "test": 2}}
    full = {**scores(0.3), "days_per_split_per_location": {"train_data": places}}
    lc = curve([scores(0.1), full], [10, "all"])
    assert lc["train_days"] == [10, 40] and lc["methods"]["detr"]["5"][1]["skill"] == pytest.approx(0.3)
    with pytest.raises(UserError, match="same number of training days"):
        curve([scores(0.1), scores(0.2), full], [10, 10, "all"])
    both = curve([scores(0.1), full], [40, "all"])  # the full runs at a given N: two points there, both kept
    assert both["train_days"] == [40] and len(both["methods"]["detr"]["5"]) == 2
    with pytest.raises(UserError, match="does not say its training days"):
        curve([scores(0.1)], ["all"])
