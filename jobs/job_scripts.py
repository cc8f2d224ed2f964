"""The job scripts jobs/submit writes: scheduler directives (Cobalt, PBS Pro, Slurm) and the bash body.

The body runs the pipeline's declared steps (sagecast_pipeline.steps.chain): stage 1 is [prepare, when --raw
is given,] train, export, evaluate; stage 2 is both variants, evaluate, report. `compare` renders the graph of
sagecast-compare (sagecast_pipeline.compare.comparison) as jobs: its data and stage-1 steps in one job, each
stage-2 run a task of a job array (Slurm --array, PBS -J; separate jobs on Cobalt, which has no arrays), the
evaluations and the HTML report in a last job. Each step is skipped when its completion record exists, so a
resubmitted job resumes at its first unfinished step (and training at its checkpoint). Standard library only,
like jobs/submit (run on bare login nodes). Every value in the body is shell-quoted; values that reach a
directive line were checked by jobs/submit (DIRECTIVE_VALUE) first.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from sagecast_pipeline.steps import Step, chain

ARRAY_INDEX = {"slurm": "SLURM_ARRAY_TASK_ID", "pbs": "PBS_ARRAY_INDEX"}  # Cobalt has no job arrays

REPO = Path(__file__).resolve().parents[1]


def bind_roots(paths: list[Path]) -> list[str]:
    """Distinct bind mounts, dropping any path inside another."""
    paths = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    roots: list[Path] = []
    for p in paths:
        if not any(r == p or r in p.parents for r in roots):
            roots.append(p)
    return [str(r) for r in roots]


def header(a, stage: str, nodes: int, wall: str, logs: Path, *, distributed: bool, array: int = 0) -> list[str]:
    """The directives of one job; `distributed`: it holds the multi-node, multi-GPU step; `array`: that many tasks."""
    job = f"{a.name}-{stage}"
    if a.scheduler == "cobalt":
        # Cobalt reads directives only from the lines right after the shebang: a blank line ends them.
        lines = [f"-n {nodes}", f"-t {wall}", f"-q {a.queue}", f"-A {a.project}", f"--jobname {job}",
                 f"-O {logs / stage}"]
        if a.filesystems:
            lines.append(f"--attrs filesystems={a.filesystems}")
        return [f"#COBALT {x}" for x in lines]
    if a.scheduler == "pbs":
        select = f"select={nodes}" + (f":system={a.system}" if a.system else "")
        # An array's tasks each write their own log: PBS puts the index in place of ^array_index^.
        log = f"{logs / stage}.^array_index^.out" if array else f"{logs / stage}.out"
        lines = [f"-N {job}", f"-A {a.project}", f"-q {a.queue}", f"-l {select}", "-l place=scatter",
                 f"-l walltime={wall}", "-j oe", f"-o {log}"] + ([f"-J 0-{array - 1}"] if array else [])
        if a.filesystems:
            lines.append(f"-l filesystems={a.filesystems.replace(',', ':')}")
        return [f"#PBS {x}" for x in lines]
    # Stage 1 starts one torchrun per node (or one MPI rank per process); stage 2 runs one process on one GPU.
    tasks = a.procs_per_node if a.mpi and distributed else 1
    gpus = a.gpus_per_node if distributed else min(a.gpus_per_node, 1)
    lines = [f"--job-name={job}", f"--account={a.project}", f"--partition={a.queue}", f"--nodes={nodes}",
             f"--ntasks-per-node={tasks}"]
    # CPUs: the given number per node, else the whole node (--exclusive; run_stage.sh then gives each step the
    # node's CPUs). Without either, Slurm gives each task one core, shared by its workers and data loaders.
    # Stage 2's one GPU comes with that GPU's share of the node's CPUs.
    cpus = a.cpus_per_node * gpus // a.gpus_per_node if gpus and not distributed else a.cpus_per_node
    lines += [f"--cpus-per-task={max(cpus // tasks, 1)}"] if a.cpus_per_node else ["--exclusive"]
    # An array task's log is named by the array's job id and its index (%A_%a), any other by its job id.
    lines += [f"--time={wall}", f"--output={logs / stage}-{'%A_%a' if array else '%j'}.out"]
    lines += [f"--array=0-{array - 1}"] if array else []
    if gpus:
        lines.append(f"--gpus-per-node={gpus}")
    if a.grace:  # TERM to the job's steps this many seconds before the wall time: training checkpoints, exits 75
        lines.append(f"--signal=TERM@{a.grace}")
    return [f"#SBATCH {x}" for x in lines]


def job_steps(a, paths: dict[str, Path], overrides: dict[str, list[str]]) -> dict[str, list[Step]]:
    """The steps of each job: the chain's, in the folders jobs/submit chose (real data has no synthetic step)."""
    steps = chain(raw=a.raw, prepared=paths["prepared"], stage1=paths["stage1"], stage2=paths["run"] / "stage2",
                  prepare_args=shlex.split(a.prepare_args), stage1_args=overrides["stage1"],
                  stage2_args=overrides["stage2"], preset=a.preset)
    return {"stage1": [s for s in steps["data"] if s.tool == "sagecast-prepare"] + steps["stage1"],
            "stage2": steps["stage2"]}


def compare_jobs(a, steps: list[Step]) -> dict[str, list[Step]]:
    """sagecast-compare's steps by job, in submission order: compare_stage1 (data, stage 1, its exports), the
    stage-2 runs (one job array, compare_stage2; on Cobalt one job each, compare_stage2_<i>), compare_report."""
    first = next(i for i, s in enumerate(steps) if s.tool == "sagecast-stage2-train")
    last = max(i for i, s in enumerate(steps) if s.tool == "sagecast-stage2-train")
    runs = steps[first:last + 1]
    # A one-task array would be refused by PBS (-J needs two indices): one run is one plain job everywhere.
    trains = {"compare_stage2": runs} if a.scheduler in ARRAY_INDEX and len(runs) > 1 else {
        f"compare_stage2_{i}": [s] for i, s in enumerate(runs)}
    return {"compare_stage1": steps[:first], **trains, "compare_report": steps[last + 1:]}


STEP_FUNCTION = [
    "# A step runs unless its completion record exists: a resubmitted job resumes at its first unfinished step.",
    "# A stop signal to every process of the job (scancel --full, qsig) reaches the step too, whose launcher",
    "# waits for it; this shell then ends with 75 (resubmit to resume) instead of starting the next step.",
    "stopped=0",
    "trap 'stopped=1' TERM USR1",
    'step() { if [[ -f "$1" ]]; then echo "done: $1"; else shift; "$@"; fi; if ((stopped)); then exit 75; fi; }',
]


def step_line(step: Step) -> str:
    """The step's command after the files it copies into place first (as sagecast_pipeline.run does: only while
    it is not done, and only what exists)."""
    q = shlex.quote
    launcher = "launch" if step.distributed else "single"  # launch: every node and GPU of the job
    copies = [f"[[ -f {q(str(step.record))} || ! -f {q(str(src))} ]] || {{ mkdir -p {q(str(dst.parent))} && "
              f"cp -p {q(str(src))} {q(str(dst))}; }}\n" for src, dst in step.copies]
    return "".join(copies) + f'step {q(str(step.record))} "${{{launcher}[@]}}" -- {step.shell()}'


def array_lines(a, steps: list[Step]) -> list[str]:
    """The body of a job array: each task runs the step of its index."""
    cases = [f"    {i}) {step_line(s)} ;;" for i, s in enumerate(steps)]
    return [f'case "${{{ARRAY_INDEX[a.scheduler]}}}" in', *cases,
            f'    *) echo "no step for array index ${{{ARRAY_INDEX[a.scheduler]}}}" >&2; exit 2 ;;', "esac"]


def render(a, stage: str, steps: list[Step], paths: dict[str, Path], *, array: bool = False) -> str:
    """One job script; `array`: a job array of len(steps) tasks, each running one of `steps`."""
    q = shlex.quote
    distributed = any(s.distributed for s in steps)
    nodes, wall = (a.nodes, a.walltime) if distributed else (1, a.stage2_walltime)
    workdir = '"$PBS_O_WORKDIR"  # qsub ran in the repository root' if a.scheduler == "pbs" else q(str(REPO))
    body = ["set -euo pipefail", f"cd {workdir}"]
    if a.module:
        body += ["set +u  # module and conda scripts read unset variables"]
        body += [f"module load {q(m)}" for m in a.module] + ["set -u"]
    if a.conda:
        body += ["set +u  # conda's activation scripts read unset variables", 'eval "$(conda shell.bash hook)"',
                 f"conda activate {q(a.conda)}", "set -u"]
    opts = ""
    if a.container:
        binds = bind_roots([REPO, paths["run"], paths["prepared"], paths["stage1"], *a.bind]
                           + [p for p in (a.raw, paths.get("heldout_raw")) if p])
        opts = f" --container {q(str(a.container))}" + "".join(f" --bind {q(b)}" for b in binds)
    if distributed:
        mpi = " --mpi" if a.mpi else ""
        body += [f"launch=(jobs/run_stage.sh --nproc {a.procs_per_node}{mpi}{opts})"]
    body += [f"single=(jobs/run_stage.sh --single{opts})", "", *STEP_FUNCTION, ""]
    body += array_lines(a, steps) if array else [step_line(s) for s in steps]
    hdr = header(a, stage, nodes, wall, paths["run"] / "logs", distributed=distributed,
                 array=len(steps) if array else 0)
    return "\n".join(["#!/bin/bash", *hdr, "", f"# sagecast {stage}, written by jobs/submit", *body]) + "\n"
