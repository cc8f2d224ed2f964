"""`make compare`: DETR vs JEPA with intervals, strong baselines and a held-out sky, from nothing to report.md.

    sagecast-compare --out runs/compare                          # the full comparison (README), = make compare
    python -m sagecast_pipeline.compare --out /tmp/c --days 4 --heldout-days 2 --seeds 0 --stage2 epochs=2
    sagecast-compare --out runs/compare --print                  # the commands and records; run nothing

Steps (declared with sagecast_pipeline.steps), each a separate process, skipped when its completion record exists
and otherwise run again, resuming its own checkpoint (rerun to resume):
  1. data.synthetic: --days whole days of W056 (seed 0, the training sky) and --heldout-days of a sky the
     training never sees (--heldout-seed, other dates); data.prepare both, the training sky with --fractions
     (more test days than the prepare default's 15 %: the intervals resample whole test days).
  2. stage 1 (quick preset) on the training folder; export; stage1_jea.evaluate (the cloud-fraction probe).
  3. the same encoders exported on the held-out folder, into OUT/stage1_heldout.
  4. stage 2: each variant × each seed, one run dir OUT/stage2/<variant>_s<seed>.
  5. stage2_forecast.evaluate on the test split (OUT/report) and on every held-out day (OUT/report_heldout),
     with the synthetic oracles when the raw folders have them; the HTML report OUT/report/report.html.
SIGINT/SIGTERM are passed on to the running step, which is waited for (training checkpoints, exits 75).
`--features grid` trains and reports stage 2 on the exported 2×2 feature grids instead (OUT/stage2_grid,
OUT/report_grid, OUT/report_grid_heldout), reusing steps 1–3 of a finished comparison.
Writes OUT/timings.json (seconds per step), the measured pieces behind the time estimate in docs/results.md.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from sagecast_common.cli import make_parser
from sagecast_pipeline import steps as st
from sagecast_pipeline.run import StepFailed, print_steps, run_steps


def comparison(args) -> list[st.Step]:
    """Every step of the comparison, in order."""
    out = Path(args.out)
    steps = []
    skies = {"train": (args.start, args.days, 0), "heldout": (args.heldout_start, args.heldout_days, args.heldout_seed)}
    for sky, (start, days, seed) in skies.items():
        raw, prepared = out / f"raw_{sky}", out / f"prepared_{sky}"
        steps.append(st.synthetic(raw, ["--nodes", args.node, "--start", start, "--days", str(days), "--interval-min",
                                        str(args.interval_min), "--seed", str(seed), "--size", "small",
                                        *shlex.split(args.synthetic)], name=f"synthetic_{sky}"))
        split = ["--fractions", args.fractions] if sky == "train" else []
        steps.append(st.prepare(raw, prepared, ["--size", "64", *split], name=f"prepare_{sky}"))
    s1, s1_held = out / "stage1", out / "stage1_heldout"
    steps += [st.stage1_train(out / "prepared_train", s1, args.stage1),
              st.stage1_export(s1),
              st.stage1_evaluate(s1, ["--every", str(args.probe_every)], name="stage1_probe"),
              st.stage1_export(s1_held, prepared=out / "prepared_heldout", encoders_of=s1,
                               name="stage1_export_heldout")]
    runs, tag = [], "" if args.features == "both" else f"_{args.features}"
    for variant in args.variants:
        for seed in args.seeds:
            run = out / f"stage2{tag}" / f"{variant}_s{seed}"
            runs.append(run)
            steps.append(st.stage2_train(s1, run, variant, [f"seed={seed}", f"features={args.features}",
                                                             *args.stage2], name=f"stage2{tag}_{variant}_s{seed}"))
    for name, extra, raw in ((f"report{tag}", [], "raw_train"),
                             (f"report{tag}_heldout", ["--eval-stage1-run", str(s1_held)], "raw_heldout")):
        steps.append(st.stage2_evaluate(s1, runs, out / name, raw=out / raw, name=name,
                                        args=["--n-boot", str(args.n_boot), *extra]))
    report = out / f"report{tag}"
    steps.append(st.report(out / "prepared_train", s1, out / f"stage2{tag}", report / "report.html", scores=report,
                           name=f"report{tag}_html"))
    return steps


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-compare", __doc__)
    ap.add_argument("--out", required=True, help="everything goes under this folder")
    ap.add_argument("--node", default="W056", help="node VSN of both skies (its registry locations)")
    ap.add_argument("--start", default="2023-06-01", help="first local date of the training sky")
    ap.add_argument("--days", type=int, default=42, help="whole days of the training sky")
    # Many test days: the intervals resample whole days, and ±0.05 on a 15-min skill needs ~25 of them.
    ap.add_argument("--fractions", default="0.15,0.1,0.75",
                    help="train,val,test share of the training sky's days (42 days: 10 / 6 / 26; the per-date "
                         "hash of data.prepare.splits decides, so other day counts split differently)")
    ap.add_argument("--heldout-start", default="2023-08-01", help="first local date of the held-out sky")
    ap.add_argument("--heldout-days", type=int, default=6, help="whole days of the held-out sky")
    ap.add_argument("--heldout-seed", type=int, default=1, help="synthetic seed of the held-out sky")
    ap.add_argument("--interval-min", type=float, default=5.0, help="minutes between scan loops")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stage-2 seeds per variant")
    ap.add_argument("--variants", nargs="+", default=["detr", "jepa"], choices=("detr", "jepa"),
                    help="stage-2 variants to train")
    ap.add_argument("--features", default="both", choices=("both", "grid"),
                    help="stage-2 inputs: pooled vectors of both modalities, or their 2x2 feature grids (then the "
                         "runs go to stage2_grid/ and the reports to report_grid/, report_grid_heldout/; the data "
                         "and stage-1 steps are shared, so this reuses a finished default comparison)")
    ap.add_argument("--synthetic", default="", help="extra data.synthetic arguments (quoted)")
    # Two stage-1 epochs instead of the quick preset's five keep the whole comparison within an hour on 2 cores
    # (docs/results.md has the measured pieces); pass --stage1 epochs=5 for the preset's.
    ap.add_argument("--stage1", nargs="*", default=["epochs=2"], help="stage-1 key=value overrides")
    ap.add_argument("--stage2", nargs="*", default=[], help="extra stage-2 key=value overrides")
    ap.add_argument("--probe-every", type=int, default=3,
                    help="stage1_jea.evaluate --every: the stage-1 probes and their baselines on every N-th capture "
                         "(default 3, i.e. 15-minute cadence; its random-init forward pass was the slowest step)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of each report")
    ap.add_argument("--print", action="store_true", help="print the commands and completion records; run nothing")
    args = ap.parse_args(argv)
    try:
        shlex.split(args.synthetic)
    except ValueError as e:
        ap.error(f"--synthetic {args.synthetic!r}: {e}")
    steps = comparison(args)
    if args.print:
        print_steps(steps)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        run_steps(steps, prog="compare", timings=out / "timings.json")
    except StepFailed as e:
        print(f"sagecast-compare: {e}", file=sys.stderr)
        sys.exit(e.status)
    tag = "" if args.features == "both" else f"_{args.features}"
    print(f"[compare] done: {out / f'report{tag}' / 'report.md'} and {out / f'report{tag}_heldout' / 'report.md'}")


if __name__ == "__main__":
    main()
