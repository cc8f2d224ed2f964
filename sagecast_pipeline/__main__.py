"""The Makefile targets: `python -m sagecast_pipeline data|stage1|stage2 --runs RUNS` (see --help).

    python -m sagecast_pipeline stage1 --runs runs                    # synthetic sky, prepare, stage 1
    python -m sagecast_pipeline stage2 --runs runs --stage2-args "epochs=5"
    python -m sagecast_pipeline stage1 --runs runs --print            # the commands; run nothing

stage1 includes data; stage2 needs a finished stage 1 (RUNS/stage1/embeddings.parquet). Every step is skipped
when its completion record exists (sagecast_pipeline.steps) and otherwise run, resuming its own checkpoint.
The *-args options are one string each, split like a shell would (the Makefile passes SYNTH_ARGS, PREP_ARGS,
STAGE1_ARGS, STAGE2_ARGS through them).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from sagecast_common.cli import fail, make_parser
from sagecast_pipeline.run import StepFailed, missing_inputs, print_steps, run_steps
from sagecast_pipeline.steps import PREPARE_ARGS, SYNTHETIC_ARGS, runs_chain

PROG = "python -m sagecast_pipeline"
TARGETS = {"data": ("data",), "stage1": ("data", "stage1"), "stage2": ("stage2",)}


def main(argv: list[str] | None = None) -> None:
    ap = make_parser(PROG, __doc__)
    ap.add_argument("target", choices=sorted(TARGETS), help="data: synthetic sky and prepare; stage1: data, then "
                    "train, export, evaluate; stage2: both variants, evaluate, report")
    ap.add_argument("--runs", default="runs", help="folder of raw/, prepared/, stage1/, stage2/")
    ap.add_argument("--synthetic-args", default=SYNTHETIC_ARGS, help="data.synthetic arguments (one string)")
    ap.add_argument("--prepare-args", default=PREPARE_ARGS, help="data.prepare arguments (one string)")
    ap.add_argument("--stage1-args", default="", help="stage-1 training key=value overrides (one string)")
    ap.add_argument("--stage2-args", default="", help="stage-2 training key=value overrides (one string)")
    ap.add_argument("--print", action="store_true", help="print the commands and completion records; run nothing")
    args = ap.parse_args(argv)
    options = {}
    for key in ("synthetic_args", "prepare_args", "stage1_args", "stage2_args"):
        try:
            options[key] = shlex.split(getattr(args, key))
        except ValueError as e:
            ap.error(f"--{key.replace('_', '-')} {getattr(args, key)!r}: {e}")
    targets = runs_chain(Path(args.runs), **options)
    steps = [s for part in TARGETS[args.target] for s in targets[part]]
    if args.print:
        print_steps(steps)
        return
    for path in missing_inputs(steps):
        maker = next((t for t, parts in TARGETS.items() for part in parts for s in targets[part] if s.record == path),
                     None)
        fail(PROG, f"{path} not found: run `make {maker}` first" if maker else f"{path} not found")
    try:
        run_steps(steps, prog=args.target)
    except StepFailed as e:
        print(f"{PROG} {args.target}: {e}", file=sys.stderr)
        sys.exit(e.status)


if __name__ == "__main__":
    main()
