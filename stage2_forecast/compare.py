"""`make compare`: DETR vs JEPA with intervals, strong baselines and a held-out sky, from nothing to report.md.

    python -m stage2_forecast.compare --out runs/compare                    # the full comparison (README)
    python -m stage2_forecast.compare --out /tmp/c --days 4 --heldout-days 2 --seeds 0 --stage2 epochs=2

Steps, each a separate process and skipped when its output exists (rerun to resume):
  1. data.synthetic: --days whole days of W056 (seed 0, the training sky) and --heldout-days of a sky the
     training never sees (--heldout-seed, other dates); data.prepare both, the training sky with --fractions
     (more test days than the prepare default's 15 %: the intervals resample whole test days).
  2. stage 1 (quick preset) on the training folder; export; stage1_jea.evaluate (the cloud-fraction probe).
  3. the same encoders exported on the held-out folder, into OUT/stage1_heldout.
  4. stage 2: each variant × each seed, one run dir OUT/stage2/<variant>_s<seed>.
  5. stage2_forecast.evaluate on the test split (OUT/report) and on every held-out day (OUT/report_heldout),
     with the synthetic oracles when the raw folders have them; the HTML report OUT/report/report.html.
`--features grid` trains and reports stage 2 on the exported 2×2 feature grids instead (OUT/stage2_grid,
OUT/report_grid, OUT/report_grid_heldout), reusing steps 1–3 of a finished comparison.
Writes OUT/timings.json (seconds per step), the measured pieces behind README's time estimate.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sagecast_common.cli import make_parser
from sagecast_common.runio import atomic_write_json


def step(name: str, done: Path, cmd: list[str], timings: Path) -> None:
    """Run one step in its own process unless `done` exists; add its wall time to the `timings` JSON file.

    The file is rewritten after every step, so a comparison stopped halfway keeps the times of what it finished.
    """
    if done.exists():
        print(f"[compare] {name}: done ({done})", flush=True)
        return
    print(f"[compare] {name}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = round(time.perf_counter() - t0, 1)
    previous = json.loads(timings.read_text()) if timings.exists() else {}
    atomic_write_json(timings, {**previous, name: seconds})


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
    # (README "Comparing the variants" has the measured pieces); pass --stage1 epochs=5 for the preset's.
    ap.add_argument("--stage1", nargs="*", default=["epochs=2"], help="stage-1 key=value overrides")
    ap.add_argument("--stage2", nargs="*", default=[], help="extra stage-2 key=value overrides")
    ap.add_argument("--probe-every", type=int, default=3,
                    help="stage1_jea.evaluate --every: the stage-1 probes and their baselines on every N-th capture "
                         "(default 3, i.e. 15-minute cadence; its random-init forward pass was the slowest step)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of each report")
    args = ap.parse_args(argv)
    out, py = Path(args.out), sys.executable
    out.mkdir(parents=True, exist_ok=True)
    timings = out / "timings.json"
    skies = {"train": (args.start, args.days, 0), "heldout": (args.heldout_start, args.heldout_days, args.heldout_seed)}
    for sky, (start, days, seed) in skies.items():
        raw, prepared = out / f"raw_{sky}", out / f"prepared_{sky}"
        step(f"synthetic_{sky}", raw / ".complete",
             [py, "-m", "data.synthetic", "--out", str(raw), "--nodes", args.node, "--start", start, "--days",
              str(days), "--interval-min", str(args.interval_min), "--seed", str(seed), "--size", "small",
              *shlex.split(args.synthetic)], timings)
        (raw / ".complete").touch()
        split = ["--fractions", args.fractions] if sky == "train" else []
        step(f"prepare_{sky}", prepared / "index.parquet",
             [py, "-m", "data.prepare", "--raw", str(raw), "--out", str(prepared), "--size", "64", *split], timings)
    s1, s1_held = out / "stage1", out / "stage1_heldout"
    step("stage1_train", s1 / "encoders.pt", [py, "-m", "stage1_jea.train", "--preset", "quick",
                                              f"prepared={out / 'prepared_train'}", f"run_dir={s1}", *args.stage1],
         timings)
    step("stage1_export", s1 / "embeddings.parquet", [py, "-m", "stage1_jea.export", "--run", str(s1)], timings)
    step("stage1_probe", s1 / "probe_cloud_fraction.json", [py, "-m", "stage1_jea.evaluate", "--run", str(s1),
                                                                    "--every", str(args.probe_every)],
         timings)
    s1_held.mkdir(parents=True, exist_ok=True)
    for name in ("encoders.pt", "config.json", "probe_cloud_fraction.json"):  # the same encoders, another sky
        if (s1 / name).exists():
            shutil.copy2(s1 / name, s1_held / name)
    step("stage1_export_heldout", s1_held / "embeddings.parquet",
         [py, "-m", "stage1_jea.export", "--run", str(s1_held), "--prepared", str(out / "prepared_heldout")], timings)
    runs, tag = [], "" if args.features == "both" else f"_{args.features}"
    for variant in args.variants:
        for seed in args.seeds:
            run = out / f"stage2{tag}" / f"{variant}_s{seed}"
            runs.append(str(run))
            step(f"stage2{tag}_{variant}_s{seed}", run / "loss.png",
                 [py, "-m", "stage2_forecast.train", "--variant", variant, "--preset", "quick",
                  f"stage1_run={s1}", f"run_dir={run}", f"seed={seed}", f"features={args.features}",
                  *args.stage2], timings)
    for name, extra, raw in ((f"report{tag}", [], "raw_train"),
                             (f"report{tag}_heldout", ["--eval-stage1-run", str(s1_held)], "raw_heldout")):
        step(name, out / name / "report.json",
             [py, "-m", "stage2_forecast.evaluate", "--stage1-run", str(s1), "--runs", *runs, "--out", str(out / name),
              "--raw", str(out / raw), "--n-boot", str(args.n_boot), *extra], timings)
    report = out / f"report{tag}"
    step(f"report{tag}_html", report / "report.html",
         [py, "-m", "stage2_forecast.report", "--prepared", str(out / "prepared_train"), "--stage1", str(s1),
          "--stage2", str(out / f"stage2{tag}"), "--report-dir", str(report), "--out", str(report / "report.html")],
         timings)
    print(f"[compare] done: {report / 'report.md'} and {out / f'report{tag}_heldout' / 'report.md'}")


if __name__ == "__main__":
    main()
