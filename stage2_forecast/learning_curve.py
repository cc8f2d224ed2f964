"""Learning curve: forecast skill against the number of training days, from evaluations of nested training sets.

    python -m stage2_forecast.learning_curve --scores A/scores.json B/scores.json --days 10 20 --out REPORT_DIR

Each scores.json is a stage-2 evaluation (stage2_forecast.evaluate) of runs trained with `train_days=N` (the
N-day training sets are nested: samples.restrict_train_days), on the same test days. `--days all` marks the
evaluation of runs on every training day: its N is read from that scores.json (the train days it reports). Writes
REPORT_DIR/learning_curve.png (skill vs training days per horizon, 95 % day-bootstrap intervals as bars) and,
last, REPORT_DIR/learning_curve.json (its completion record: per method and horizon, the skill, its interval
and, where the evaluation had the synthetic truth, the headroom captured). `sagecast-compare --train-days`
runs it; the HTML report (sagecast_report) shows both when they sit next to its scores.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend)

from sagecast_common.cli import UserError, make_parser, read_json, run_cli  # noqa: E402
from sagecast_common.runio import atomic_path, atomic_write_json  # noqa: E402

SHOWN = ("detr", "jepa", "ridge", "damped_anomaly")  # the networks and their strongest same-input baselines


def train_days_of(scores: dict) -> int:
    """The training days an evaluation's runs learned from (summed over node locations)."""
    try:
        per_place = scores["days_per_split_per_location"]["train_data"]
    except KeyError:
        raise UserError("--days all: the scores.json does not say its training days (days_per_split_per_location; "
                        "evaluate again with this version)") from None
    return sum(split["train"] for split in per_place.values())


def curve(scores: list[dict], days: list[int | str]) -> dict:
    """{"train_days", "horizons_min", "methods": {m: {h: [{days, skill, skill_ci, headroom, headroom_ci}]}}};
    a day count "all" is read from its scores (`train_days_of`)."""
    if len(scores) != len(days) or not days:
        raise UserError(f"need one --days value per --scores file (got {len(days)} and {len(scores)})")
    given = [d for d in days if d != "all"]
    if len(set(given)) < len(given):
        raise UserError(f"two evaluations at the same number of training days: {given}")
    # "all" may equal a given N (the runs on every day are then a second point there, with their own seeds)
    days = [train_days_of(s) if d == "all" else int(d) for s, d in zip(scores, days, strict=True)]
    order = sorted(range(len(days)), key=lambda i: days[i])
    hkeys = [f"{h:g}" for h in scores[0]["horizons_min"]]
    methods: dict[str, dict[str, list]] = {}
    for i in order:
        s = scores[i]
        if [f"{h:g}" for h in s["horizons_min"]] != hkeys:
            raise UserError(f"evaluations disagree on horizons: {s['horizons_min']} vs {hkeys}")
        room = s.get("headroom", {}).get("models", {}) if s.get("headroom", {}).get("available") else {}
        for m, per_h in s["variants"].items():
            if m not in SHOWN:
                continue
            for hk in hkeys:
                r, hr = per_h[hk], room.get(m, {}).get(hk, {})
                methods.setdefault(m, {}).setdefault(hk, []).append(
                    {"days": days[i], "skill": r["skill_vs_persistence"], "skill_ci": r["skill_ci"],
                     "headroom": hr.get("headroom"), "headroom_ci": hr.get("headroom_ci")})
    return {"train_days": sorted(set(days)), "horizons_min": scores[0]["horizons_min"], "methods": methods,
            "interval": "95 % over test days resampled (and stage-2 seeds where a point has several runs); the test "
                        "days are the same for every point"}


def plot(lc: dict, path: Path) -> None:
    hkeys = [f"{h:g}" for h in lc["horizons_min"]]
    fig, axes = plt.subplots(1, len(hkeys), figsize=(3.2 * len(hkeys), 3.0), sharey=True, squeeze=False)
    for ax, hk in zip(axes[0], hkeys, strict=True):
        for m, per_h in lc["methods"].items():
            pts = per_h[hk]
            x = [p["days"] for p in pts]
            y = [p["skill"] for p in pts]
            err = [[p["skill"] - p["skill_ci"][0] for p in pts], [p["skill_ci"][1] - p["skill"] for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m, ls="--" if m not in ("detr", "jepa") else "-")
        ax.set_xscale("log")
        ax.set_xticks(lc["train_days"], [str(d) for d in lc["train_days"]])
        ax.set_title(f"+{hk} min")
        ax.set_xlabel("training days")
    axes[0][0].set_ylabel("skill vs persistence")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _days(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days or 'all', got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-learning-curve", __doc__)
    ap.add_argument("--scores", nargs="+", required=True, help="scores.json of each nested training set")
    ap.add_argument("--days", nargs="+", type=_days, required=True,
                    help="training days of each, same order; 'all': read from that scores.json")
    ap.add_argument("--out", required=True, help="folder for learning_curve.json and learning_curve.png")
    args = ap.parse_args(argv)

    def run() -> None:
        scores = [read_json(Path(p), made_by="sagecast-stage2-evaluate", what="stage-2 scores") for p in args.scores]
        lc = curve(scores, args.days)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(lc, out / "learning_curve.png")
        atomic_write_json(out / "learning_curve.json", lc)  # last: the completion record
        print(f"wrote {out / 'learning_curve.json'} ({len(args.days)} training-set sizes)")

    run_cli(run, prog="sagecast-learning-curve")


if __name__ == "__main__":
    main()
