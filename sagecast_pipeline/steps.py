"""The pipeline's steps, declared once: each tool's arguments as a function of folders and options.

    from sagecast_pipeline.steps import chain
    chain(raw=R / "raw", prepared=R / "prepared", stage1=R / "stage1", stage2=R / "stage2")["stage1"]

A `Step` is one tool run: its console script (sagecast_pipeline.tools maps it to a module), its arguments,
its completion record (the file the tool writes atomically and last, so its existence means "finished") and
the records of earlier steps it reads. The chain is synthetic → prepare → stage-1 train → export → stage-1
evaluate → stage-2 train (detr, jepa) → stage-2 evaluate → report; `sagecast_pipeline.compare` builds its
larger graph from the same step functions. Stage-1 training is the one distributed step (`distributed`):
the job scripts start it on every node and GPU of the job.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sagecast_pipeline.tools import TOOLS

PRESET = "quick"
VARIANTS = ("detr", "jepa")
# The quick default (README): one node, 4 whole local days (>= 1 day each for train/val/test), 5-minute
# cadence, small images. Defaults of `python -m sagecast_pipeline`, hence of the Makefile targets, where
# SYNTH_ARGS / PREP_ARGS replace them.
SYNTHETIC_ARGS = "--nodes W056 --start 2023-05-18 --days 4 --interval-min 5 --seed 0 --size small"
PREPARE_ARGS = "--size 64"


@dataclass(frozen=True)
class Step:
    name: str
    tool: str  # a console script, a key of sagecast_pipeline.tools.TOOLS
    args: tuple[str, ...]
    record: Path  # written last by the tool: the step is done when it exists
    needs: tuple[Path, ...] = ()  # records of the steps whose outputs it reads
    distributed: bool = False  # started across every node and GPU of a batch job
    copies: tuple[tuple[Path, Path], ...] = ()  # (source, destination) files put in place before the command
    # Done only while no record it needs is newer than its own: cheap steps that gather others' results (the HTML
    # report) are redrawn when a rerun adds to them, e.g. `sagecast-compare --train-days` on a finished comparison.
    refresh: bool = False

    def argv(self, python: str) -> list[str]:
        return [python, "-m", TOOLS[self.tool], *self.args]

    def shell(self) -> str:
        return shlex.join([self.tool, *self.args])


def synthetic(raw: Path, args: Sequence[str], *, name: str = "synthetic") -> Step:
    return Step(name, "sagecast-synthetic", ("--out", str(raw), *args), raw / ".complete")


def prepare(raw: Path, prepared: Path, args: Sequence[str], *, name: str = "prepare") -> Step:
    # complete.json is written last and names what it covers (data.prepare.outputs.require_complete checks it).
    return Step(name, "sagecast-prepare", ("--raw", str(raw), "--out", str(prepared), *args),
                prepared / "complete.json", needs=(raw / ".complete",))


def stage1_train(prepared: Path, run: Path, overrides: Sequence[str], *, preset: str = PRESET,
                 name: str = "stage1_train") -> Step:
    return Step(name, "sagecast-stage1-train", ("--preset", preset, f"prepared={prepared}", f"run_dir={run}",
                                                 *overrides),
                run / "encoders.pt", needs=(prepared / "complete.json",), distributed=True)


def stage1_export(run: Path, *, prepared: Path | None = None, encoders_of: Path | None = None,
                  name: str = "stage1_export") -> Step:
    """Export RUN's encoders on `prepared` (default: the folder it trained on). `encoders_of`: a finished stage-1
    run whose encoders (with its config and probe) are copied into RUN first: the same encoders, another sky."""
    args = ("--run", str(run)) + (("--prepared", str(prepared)) if prepared else ())
    source = encoders_of or run
    copies = tuple((encoders_of / f, run / f) for f in ("encoders.pt", "config.json", "probe_cloud_fraction.json")
                   ) if encoders_of else ()
    return Step(name, "sagecast-stage1-export", args, run / "embeddings.parquet", needs=(source / "encoders.pt",),
                copies=copies)


def stage1_evaluate(run: Path, args: Sequence[str] = (), *, name: str = "stage1_evaluate") -> Step:
    return Step(name, "sagecast-stage1-evaluate", ("--run", str(run), *args), run / "probe_cloud_fraction.json",
                needs=(run / "embeddings.parquet",))


def stage2_train(stage1: Path, run: Path, variant: str, overrides: Sequence[str], *, preset: str = PRESET,
                 name: str | None = None) -> Step:
    return Step(name or f"stage2_train_{variant}", "sagecast-stage2-train",
                ("--variant", variant, "--preset", preset, f"stage1_run={stage1}", f"run_dir={run}", *overrides),
                run / "complete.json", needs=(stage1 / "embeddings.parquet",))


def stage2_evaluate(stage1: Path, runs: Sequence[Path], out: Path, *, raw: Path | None = None,
                    args: Sequence[str] = (), name: str = "stage2_evaluate") -> Step:
    raw_args = ("--raw", str(raw)) if raw else ()
    return Step(name, "sagecast-stage2-evaluate",
                ("--stage1-run", str(stage1), "--runs", *map(str, runs), "--out", str(out), *raw_args, *args),
                out / "scores.json", needs=(stage1 / "embeddings.parquet", *(r / "complete.json" for r in runs)))


def report(prepared: Path, stage1: Path, stage2: Path, out: Path, *, scores: Path | None = None,
           extra_needs: Sequence[Path] = (), name: str = "report") -> Step:
    """The HTML report of `stage2`'s runs; `scores` is the folder with the evaluation's scores.json (default STAGE2);
    `extra_needs`: other records it draws (the learning curve's), so a newer one redraws it."""
    scores_args = ("--report-dir", str(scores)) if scores else ()
    return Step(name, "sagecast-report", ("--prepared", str(prepared), "--stage1", str(stage1), "--stage2",
                                          str(stage2), "--out", str(out), *scores_args),
                out, needs=((scores or stage2) / "scores.json", *extra_needs), refresh=True)


def learning_curve(scores: Sequence[Path], days: Sequence[int | str], out: Path, *,
                   name: str = "learning_curve") -> Step:
    """Skill against training days from the evaluations (scores.json folders) of nested training sets ("all":
    the runs on every training day)."""
    return Step(name, "sagecast-learning-curve", ("--scores", *(str(s / "scores.json") for s in scores), "--days",
                                                  *map(str, days), "--out", str(out)),
                out / "learning_curve.json", needs=tuple(s / "scores.json" for s in scores))


def chain(*, raw: Path | None, prepared: Path, stage1: Path, stage2: Path, synthetic_args: Sequence[str] = (),
          prepare_args: Sequence[str] = (), stage1_args: Sequence[str] = (), stage2_args: Sequence[str] = (),
          preset: str = PRESET) -> dict[str, list[Step]]:
    """The chain's steps by target: data (synthetic, prepare), stage1 (train, export, evaluate), stage2 (train
    both variants, evaluate, report). Without `raw` the data target is empty (the prepared folder was made
    beforehand) and the evaluation has no raw folder to read the synthetic oracles from."""
    data = [synthetic(raw, synthetic_args), prepare(raw, prepared, prepare_args)] if raw else []
    runs = [stage2 / v for v in VARIANTS]
    return {
        "data": data,
        "stage1": [stage1_train(prepared, stage1, stage1_args, preset=preset), stage1_export(stage1),
                   stage1_evaluate(stage1)],
        "stage2": [*(stage2_train(stage1, stage2 / v, v, stage2_args, preset=preset) for v in VARIANTS),
                   stage2_evaluate(stage1, runs, stage2, raw=raw),
                   report(prepared, stage1, stage2, stage2 / "report.html")],
    }


def runs_chain(runs: Path, **options) -> dict[str, list[Step]]:
    """`chain` in one RUNS folder: RUNS/raw, prepared, stage1, stage2 (the Makefile's layout)."""
    return chain(raw=runs / "raw", prepared=runs / "prepared", stage1=runs / "stage1", stage2=runs / "stage2",
                 **options)
