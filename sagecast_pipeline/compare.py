"""`make compare`: DETR vs JEPA with intervals, strong baselines and a held-out sky, from nothing to report.md.

    sagecast-compare --out runs/compare                          # the full comparison (README), = make compare
    python -m sagecast_pipeline.compare --out /tmp/c --days 4 --heldout-days 2 --seeds 0 --stage2 epochs=2
    sagecast-compare --out runs/compare --print                  # the commands and records; run nothing
    sagecast-compare --out runs/mine --raw runs/raw --heldout-node W099      # on your own sagecast-download data
    sagecast-compare --out runs/mine --raw runs/raw --heldout-raw runs/raw_elsewhere

Steps (declared with sagecast_pipeline.steps), each a separate process, skipped when its completion record exists
and otherwise run again, resuming its own checkpoint (rerun to resume):
  1. data.synthetic: --days whole days of W056 (seed 0, the training sky) and --heldout-days of a sky the
     training never sees (--heldout-seed, other dates), both --rows (default sky and horizon), daylight scan
     loops only (stage 2 anchors and scores daytime scans; night frames would double the data steps' cost);
     data.prepare both, the training sky with --fractions (more test days than the prepare default's 15 %: the
     intervals resample whole test days).
     With --raw DIR (folders as sagecast-download writes them, any nodes and dates) there is no generation:
     DIR is prepared, split by whole local days per node location; the held-out data is another folder
     (--heldout-raw) or one node of DIR (--heldout-node: OUT/raw_train and OUT/raw_heldout then link DIR's node
     folders, so that node's days are prepared apart and never trained on); without either, no held-out report.
  2. stage 1 (quick preset) on the training folder; export; stage1_jea.evaluate (the cloud-fraction probe).
  3. the same encoders exported on the held-out folder, into OUT/stage1_heldout.
  4. stage 2: each variant × each seed, one run dir OUT/stage2/<variant>_s<seed>.
  5. stage2_forecast.evaluate on the test split (OUT/report) and on every held-out day (OUT/report_heldout),
     with the synthetic oracles when the raw folders have them; the HTML report OUT/report/report.html.
     On --raw data nothing synthetic is read: the reports say "not available on real data" where a number
     needs the generator's truth (stage2_forecast.evaluate --real-data).
SIGINT/SIGTERM are passed on to the running step, which is waited for (training checkpoints, exits 75).
`--features grid` trains and reports stage 2 on the exported 2×2 feature grids instead (OUT/stage2_grid,
OUT/report_grid, OUT/report_grid_heldout), reusing steps 1–3 of a finished comparison.
On the synthetic sky stage 2 has the cloud-motion input (config motion=: the training sky's raw folder, whose
truth.parquet has each scan's motion_u, motion_v, the estimate a motion plugin on the node would publish; the
held-out evaluation reads the held-out sky's) and with it the advection path (stage2_forecast.advection).
`--no-motion` trains without it into OUT/stage2_nomotion, reports OUT/report_nomotion*, steps 1–3 reused. Real
data (--raw) has no truth: stage 2 has no motion unless --motion-table gives one (it serves training and
held-out data; runs in OUT/stage2_motion, reports OUT/report_motion*). A run folder trained with other inputs
than this comparison asks for (a folder from before a change of defaults) is refused, not reused.
Writes OUT/timings.json (seconds per step), the measured pieces behind the time estimate in docs/results.md.
The same graph runs as batch jobs: `jobs/submit ... compare` (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

from sagecast_common.cli import UserError, make_parser
from sagecast_pipeline import steps as st
from sagecast_pipeline.run import StepFailed, print_steps, run_steps

SPLITS_NEED_DAYS = 3  # one whole local day each for train, val and test (data.prepare.splits)


def data_folders(args) -> tuple[Path, Path | None]:
    """The raw folders prepared for training and for the held-out evaluation (None: no held-out evaluation)."""
    out = Path(args.out)
    if not args.raw:
        return out / "raw_train", out / "raw_heldout"
    if args.heldout_node:  # views of DIR's node folders, made by link_node_views
        return out / "raw_train", out / "raw_heldout"
    return Path(args.raw), Path(args.heldout_raw) if args.heldout_raw else None


def run_tag(args) -> str:
    """The suffix of stage-2 run and report folders: "" for the default inputs (the synthetic sky: with the cloud
    motion; --raw: without, unless --motion-table), _grid, _nomotion (synthetic, --no-motion), _motion (--raw with
    --motion-table), and their combinations."""
    default_motion = not args.raw
    motion = "" if args.motion == default_motion else ("_motion" if args.motion else "_nomotion")
    return ("" if args.features == "both" else f"_{args.features}") + motion


def motion_tables(args) -> tuple[Path | None, Path | None]:
    """The cloud-motion tables of the training and the held-out data (None, None without --motion): the table the
    user gave, else the raw folders (data.synthetic's truth.parquet)."""
    if not args.motion:
        return None, None
    if args.motion_table:
        return Path(args.motion_table), Path(args.motion_table)
    return data_folders(args)


def comparison(args) -> list[st.Step]:
    """Every step of the comparison, in order."""
    out = Path(args.out)
    steps = []
    raw_train, raw_heldout = data_folders(args)
    motion_train, motion_heldout = motion_tables(args)
    skies = {"train": raw_train, "heldout": raw_heldout}
    synthetic = {"train": (args.start, args.days, 0), "heldout": (args.heldout_start, args.heldout_days,
                                                                  args.heldout_seed)}
    for sky, raw in skies.items():
        if raw is None:
            continue
        if not args.raw:
            start, days, seed = synthetic[sky]
            steps.append(st.synthetic(raw, ["--nodes", args.node, "--start", start, "--days", str(days),
                                            "--interval-min", str(args.interval_min), "--seed", str(seed),
                                            "--size", "tiny", "--rows", args.rows, "--daylight-only",
                                            *shlex.split(args.synthetic)],
                                      name=f"synthetic_{sky}"))
        split = ["--fractions", args.fractions] if sky == "train" else []
        steps.append(st.prepare(raw, out / f"prepared_{sky}", ["--size", "32", "--rows", args.rows, *split],
                                name=f"prepare_{sky}"))
    s1, s1_held = out / "stage1", out / "stage1_heldout"
    steps += [st.stage1_train(out / "prepared_train", s1, args.stage1),
              st.stage1_export(s1),
              st.stage1_evaluate(s1, ["--every", str(args.probe_every), *(["--real-data"] if args.raw else [])],
                                 name="stage1_probe")]
    if raw_heldout is not None:
        steps.append(st.stage1_export(s1_held, prepared=out / "prepared_heldout", encoders_of=s1,
                                      name="stage1_export_heldout"))
    runs, tag = [], run_tag(args)
    inputs = [f"features={args.features}", *([f"motion={motion_train}"] if motion_train else [])]
    for variant in args.variants:
        for seed in args.seeds:
            run = out / f"stage2{tag}" / f"{variant}_s{seed}"
            runs.append(run)
            steps.append(st.stage2_train(s1, run, variant, [f"seed={seed}", *inputs, *args.stage2],
                                         name=f"stage2{tag}_{variant}_s{seed}"))
    # Real data has no generator truth: no raw folder for the oracles, and the reports say so (--real-data).
    evaluations = [(f"report{tag}", [], raw_train)]
    if raw_heldout is not None:
        held_motion = ["--motion", str(motion_heldout)] if motion_heldout else []
        evaluations.append((f"report{tag}_heldout", ["--eval-stage1-run", str(s1_held), *held_motion], raw_heldout))
    for name, extra, raw in evaluations:
        steps.append(st.stage2_evaluate(s1, runs, out / name, raw=None if args.raw else raw, name=name,
                                        args=["--n-boot", str(args.n_boot), *extra,
                                              *(["--real-data"] if args.raw else [])]))
    report = out / f"report{tag}"
    real_data = ["--real-data"] if args.raw else []
    if args.train_days:  # the learning curve: nested training sets, one seed each, scored on the same test days
        curves = []
        for days in args.train_days:
            day_runs = [out / f"stage2{tag}_days{days}" / f"{v}_s{args.seeds[0]}" for v in args.variants]
            steps += [st.stage2_train(s1, r, v, [f"seed={args.seeds[0]}", *inputs, f"train_days={days}",
                                                 *args.stage2],
                                      name=f"stage2{tag}_days{days}_{v}")
                      for r, v in zip(day_runs, args.variants, strict=True)]
            curves.append(out / f"report{tag}_days{days}")
            steps.append(st.stage2_evaluate(s1, day_runs, curves[-1], raw=None if args.raw else raw_train,
                                            name=f"report{tag}_days{days}", args=["--n-boot", str(args.n_boot),
                                                                                  *real_data]))
        # the main runs (every training day, all --seeds) are the curve's last point: no duplicate runs for it
        steps.append(st.learning_curve([*curves, report], [*args.train_days, "all"], report,
                                       name=f"learning_curve{tag}"))
    curve = [report / "learning_curve.json"] if args.train_days else []
    steps.append(st.report(out / "prepared_train", s1, out / f"stage2{tag}", report / "report.html", scores=report,
                           extra_needs=curve, name=f"report{tag}_html"))
    return steps


# The stage-2 settings a run folder's config.json must share with the comparison that would reuse it, and the
# value a config written before the setting existed stands for (advect: runs before the advection path had none).
RUN_INPUTS = {"motion": None, "features": "both", "advect": False}


def check_runs(steps: list[st.Step]) -> None:
    """A UserError naming the first stage-2 run folder whose config.json records other inputs (RUN_INPUTS) than its
    step passes: a folder from before a change of defaults would otherwise be skipped as done and reported."""
    for step in steps:
        if step.tool != "sagecast-stage2-train":
            continue
        given = dict(a.split("=", 1) for a in step.args if "=" in a and not a.startswith("-"))
        config = Path(given["run_dir"]) / "config.json"
        if not config.exists():
            continue
        try:
            recorded = json.loads(config.read_text())
        except (OSError, ValueError):
            continue  # unreadable: the training step itself says so when it runs
        wanted = {"motion": given.get("motion"), "features": given.get("features", "both"),
                  "advect": given.get("advect", "true").lower() in ("true", "1", "yes")}
        for key, default in RUN_INPUTS.items():
            if recorded.get(key, default) != wanted[key]:
                raise UserError(f"{config.parent} was trained with {key}={recorded.get(key, default)}, this "
                                f"comparison asks for {key}={wanted[key]}: remove the folder or give another --out")


def node_folders(raw: Path) -> list[str]:
    """The node folders of a sagecast-download folder: RAW/<VSN>/ with rgb/ or thermal/ inside."""
    return sorted(p.name for p in raw.iterdir() if p.is_dir() and ((p / "rgb").is_dir() or (p / "thermal").is_dir()))


def sky_days(raw: Path) -> dict[str, set]:
    """{VSN: its local dates (node time zone) with at least one RGB–thermal pair of a sky preset}: the days
    data.prepare would index and split whole, from the same scan, pairing, position filter and registry."""
    # Imported here: jobs/submit imports this module on bare login nodes (older Pythons, no project environment).
    from zoneinfo import ZoneInfo

    from data.prepare.pairing import filter_positions, pair_files, scan_raw
    from data.sage.registry import RegistryError, node_period

    files, _ = scan_raw(raw)
    kept, _ = filter_positions(pair_files(files)[0], all_positions=False, keep_unpositioned=False)
    days: dict[str, set] = {}
    for p in kept:
        try:
            period = node_period(p.vsn, p.ts_ns)
        except RegistryError as e:
            raise UserError(f"{raw}: {e}") from None
        day = dt.datetime.fromtimestamp(p.ts_ns / 1e9, ZoneInfo(period.tz)).date()
        days.setdefault(p.vsn, set()).add(day)
    return dict(sorted(days.items()))


def check_raw(args) -> None:
    """The refusals of --raw, before any step runs: a UserError (one line, exit 2) saying what is missing."""
    raw = Path(args.raw)
    if not raw.is_dir():
        raise UserError(f"--raw {raw}: not a folder (give the folder that sagecast-download wrote)")
    days = sky_days(raw)
    held_raw, held = raw, {}
    if args.heldout_node:
        vsn = args.heldout_node.upper()
        if vsn not in node_folders(raw):
            raise UserError(f"--heldout-node {vsn} is not in {raw} (its nodes: {', '.join(node_folders(raw))})")
        held = {vsn: days.pop(vsn, set())}
    elif args.heldout_raw:
        held_raw = Path(args.heldout_raw)
        held = sky_days(held_raw) if held_raw.is_dir() else {}
        both = sorted((set(held) | set(node_folders(held_raw) if held_raw.is_dir() else [])) & set(days))
        if both:
            raise UserError(f"--heldout-raw {held_raw} holds {', '.join(both)}, also in --raw {raw}: a held-out node "
                            "must not be trained on (--heldout-node holds one node of --raw out)")
    if not days:
        raise UserError(f"--raw {raw}: no RGB–thermal pairs of sky presets to train on (sagecast-download writes "
                        "RAW/<VSN>/rgb and RAW/<VSN>/thermal; its default fetches the sky presets)")
    # data.prepare.splits gives each split whole dates: it needs that many distinct dates over the training nodes.
    dates = set().union(*days.values())
    if len(dates) < SPLITS_NEED_DAYS:
        per_node = ", ".join(f"{vsn} {len(d)}" for vsn, d in days.items())
        raise UserError(f"--raw {raw} has {len(dates)} whole local days of sky-preset pairs to train on "
                        f"({per_node}); the train/val/test splits need at least {SPLITS_NEED_DAYS}")
    if (args.heldout_node or args.heldout_raw) and not any(held.values()):
        raise UserError(f"held-out data {held_raw} ({', '.join(held) or 'no nodes'}): no RGB–thermal pairs of sky "
                        "presets")


def link_node_views(args) -> None:
    """--heldout-node: OUT/raw_train links DIR's other node folders, OUT/raw_heldout the held-out one (absolute
    links, remade each run, so DIR may move between runs of the same OUT)."""
    raw, held = Path(args.raw).resolve(), args.heldout_node.upper()
    views = {"raw_train": [v for v in node_folders(raw) if v != held], "raw_heldout": [held]}
    for view, nodes in views.items():
        folder = Path(args.out) / view
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_symlink():
                old.unlink()
        for vsn in nodes:
            os.symlink(raw / vsn, folder / vsn, target_is_directory=True)


def _day_list(text: str) -> list[int]:
    try:
        days = sorted({int(d) for d in text.split(",") if d.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--train-days wants a comma list of whole days, got {text!r}") from None
    if not days or days[0] < 1:
        raise argparse.ArgumentTypeError(f"--train-days wants positive day counts, got {text!r}")
    return days


def parser():
    ap = make_parser("sagecast-compare", __doc__)
    ap.add_argument("--out", required=True, help="everything goes under this folder")
    ap.add_argument("--raw", help="your data: a folder as sagecast-download writes it (any nodes and dates); no "
                                  "synthetic sky is generated and the synthetic-sky options below are unused")
    held = ap.add_mutually_exclusive_group()
    held.add_argument("--heldout-raw", help="with --raw: held-out data, another sagecast-download folder (none of "
                                            "its nodes may be in --raw)")
    held.add_argument("--heldout-node", help="with --raw: hold this node of --raw out (prepared apart, never "
                                             "trained on, evaluated on all its days)")
    ap.add_argument("--node", default="W056", help="synthetic sky: node VSN of both skies (its registry locations)")
    ap.add_argument("--start", default="2023-06-01", help="synthetic sky: first local date of the training sky")
    ap.add_argument("--days", type=int, default=64, help="synthetic sky: whole days of the training sky")
    # ≥ 40 training days (the networks need many: issue 26) and ≥ 20 test days (the intervals resample whole days,
    # and ±0.05 on a 15-min skill needs ~25 of them); val only picks the epoch and the residual start.
    ap.add_argument("--fractions", default="0.62,0.06,0.32",
                    help="train,val,test share of the training folder's days (64 days from 2023-06-01: 40 / 3 / 21; "
                         "the per-date hash of data.prepare.splits decides, so other day counts split differently)")
    # Before 2023-05-20 W056 stood at Argonne (data/sage/nodes.json): another place, climate and time zone than the
    # San Diego training sky, and another seed.
    ap.add_argument("--heldout-start", default="2022-07-01",
                    help="synthetic sky: first local date of the held-out sky (default: W056 at Argonne, IL)")
    ap.add_argument("--heldout-days", type=int, default=10, help="synthetic sky: whole days of the held-out sky")
    ap.add_argument("--heldout-seed", type=int, default=1, help="synthetic sky: seed of the held-out sky")
    ap.add_argument("--interval-min", type=float, default=5.0, help="synthetic sky: minutes between scan loops")
    # Two seeds: the fewest that put stage-2 seed randomness into the intervals; a third run per variant does not
    # fit the hour at 40 training days (docs/results.md has the measured pieces).
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="stage-2 seeds per variant")
    ap.add_argument("--variants", nargs="+", default=["detr", "jepa"], choices=("detr", "jepa"),
                    help="stage-2 variants to train")
    ap.add_argument("--features", default="both", choices=("both", "grid"),
                    help="stage-2 inputs: pooled vectors of both modalities, or their 2x2 feature grids (then the "
                         "runs go to stage2_grid/ and the reports to report_grid/, report_grid_heldout/; the data "
                         "and stage-1 steps are shared, so this reuses a finished default comparison; on the "
                         "default sky it needs far more than 24 GiB of memory: docs/stage2.md)")
    ap.add_argument("--no-motion", action="store_true",
                    help="synthetic sky: stage 2 without the cloud-motion input, which it has by default (each "
                         "sky's truth.parquet holds the motion a motion plugin would publish; runs in "
                         "stage2_nomotion/, reports in report_nomotion/, report_nomotion_heldout/; data and stage 1 "
                         "are shared)")
    ap.add_argument("--motion-table", help="--raw: the cloud-motion table (parquet/CSV: vsn, timestamp, motion_u, "
                                           "motion_v) for training and held-out data; stage 2 then has the motion "
                                           "input (runs in stage2_motion/, reports in report_motion*/)")
    ap.add_argument("--synthetic", default="", help="synthetic sky: extra data.synthetic arguments (quoted)")
    # Stage 1 sees 3 × 12,000 pairs (a fresh draw of the ~120,000 training pairs each epoch, stage-1 epoch_pairs):
    # on 2 cores at 32 px that is ~4 minutes (147 pairs/s measured), where 3 whole epochs would take ~40.
    ap.add_argument("--stage1", nargs="*", default=["epochs=3", "epoch_pairs=12000"],
                    help="stage-1 key=value overrides (given, they replace the defaults)")
    # Batches of 64 run ~1.2× the samples/s of the preset's 16 on 2 cores; 8 epochs cap a run at ~6 minutes on 40
    # training days (early stopping usually ends it sooner).
    ap.add_argument("--stage2", nargs="*", default=["batch_size=64", "epochs=8"],
                    help="stage-2 key=value overrides (given, they replace the defaults)")
    ap.add_argument("--probe-every", type=int, default=3,
                    help="stage1_jea.evaluate --every: the stage-1 probes and their baselines on every N-th capture "
                         "(default 3, i.e. 15-minute cadence; its random-init forward pass was the slowest step)")
    ap.add_argument("--train-days", type=_day_list, default=[],
                    help="learning curve: also train each variant (first seed) with only N training days for each N "
                         "of this comma list (nested sets, e.g. 10,20), score them on the same test days and "
                         "draw skill against N in the report (OUT/report/learning_curve.png); the main runs, on every "
                         "training day, are its last point")
    ap.add_argument("--rows", default="sky,horizon",
                    help="preset rows generated and prepared (data.formats.parse_rows): sky, or sky,horizon (the "
                         "horizon row is stage-2 context; targets stay the sky row)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of each report")
    ap.add_argument("--print", action="store_true", help="print the commands and completion records; run nothing")
    return ap


def parse(argv: list[str] | None):
    """compare's options, checked (jobs/submit parses its --compare-args with this too)."""
    ap = parser()
    args = ap.parse_args(argv)
    try:
        shlex.split(args.synthetic)
    except ValueError as e:
        ap.error(f"--synthetic {args.synthetic!r}: {e}")
    if (args.heldout_raw or args.heldout_node) and not args.raw:
        ap.error("--heldout-raw and --heldout-node need --raw (the synthetic sky has its own held-out sky)")
    if args.no_motion and args.motion_table:
        ap.error("--no-motion and --motion-table contradict each other")
    if args.motion_table and not args.raw:
        ap.error("--motion-table is for --raw data (the synthetic sky's motion is in its truth.parquet)")
    args.motion = bool(args.motion_table) if args.raw else not args.no_motion
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        if args.raw:
            check_raw(args)
    except UserError as e:
        print(f"sagecast-compare: error: {e}", file=sys.stderr)
        sys.exit(2)
    steps = comparison(args)
    if args.print:
        print_steps(steps)
        return
    try:
        check_runs(steps)
    except UserError as e:
        print(f"sagecast-compare: error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.heldout_node:
        link_node_views(args)
    try:
        run_steps(steps, prog="compare", timings=out / "timings.json")
    except StepFailed as e:
        print(f"sagecast-compare: {e}", file=sys.stderr)
        sys.exit(e.status)
    tag = run_tag(args)
    reports = [out / f"report{tag}" / "report.md"]
    if data_folders(args)[1] is not None:
        reports.append(out / f"report{tag}_heldout" / "report.md")
    print(f"[compare] done: {' and '.join(map(str, reports))}")


if __name__ == "__main__":
    main()
