"""The job scripts jobs/submit writes: scheduler directives (Cobalt, PBS Pro, Slurm) and the bash body.

The body runs the pipeline's declared steps (sagecast_pipeline.steps.chain): stage 1 is [prepare, when --raw
is given,] train, export, evaluate; stage 2 is both variants, evaluate, report. Each step is skipped when its
completion record exists, so a resubmitted job resumes at its first unfinished step (and training at its
checkpoint). Standard library only, like jobs/submit (run on bare login nodes). Every value in the body is
shell-quoted; values that reach a directive line were checked by jobs/submit (DIRECTIVE_VALUE) first.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from sagecast_pipeline.steps import Step, chain

REPO = Path(__file__).resolve().parents[1]


def bind_roots(paths: list[Path]) -> list[str]:
    """Distinct bind mounts, dropping any path inside another."""
    paths = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    roots: list[Path] = []
    for p in paths:
        if not any(r == p or r in p.parents for r in roots):
            roots.append(p)
    return [str(r) for r in roots]


def header(a, stage: str, nodes: int, wall: str, logs: Path) -> list[str]:
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
        lines = [f"-N {job}", f"-A {a.project}", f"-q {a.queue}", f"-l {select}", "-l place=scatter",
                 f"-l walltime={wall}", "-j oe", f"-o {logs / stage}.out"]
        if a.filesystems:
            lines.append(f"-l filesystems={a.filesystems.replace(',', ':')}")
        return [f"#PBS {x}" for x in lines]
    # Stage 1 starts one torchrun per node (or one MPI rank per process); stage 2 runs one process on one GPU.
    tasks = a.procs_per_node if a.mpi and stage == "stage1" else 1
    gpus = a.gpus_per_node if stage == "stage1" else min(a.gpus_per_node, 1)
    lines = [f"--job-name={job}", f"--account={a.project}", f"--partition={a.queue}", f"--nodes={nodes}",
             f"--ntasks-per-node={tasks}"]
    # CPUs: the given number per node, else the whole node (--exclusive; run_stage.sh then gives each step the
    # node's CPUs). Without either, Slurm gives each task one core, shared by its workers and data loaders.
    # Stage 2's one GPU comes with that GPU's share of the node's CPUs.
    cpus = a.cpus_per_node * gpus // a.gpus_per_node if gpus and stage == "stage2" else a.cpus_per_node
    lines += [f"--cpus-per-task={max(cpus // tasks, 1)}"] if a.cpus_per_node else ["--exclusive"]
    lines += [f"--time={wall}", f"--output={logs / stage}-%j.out"]
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


STEP_FUNCTION = [
    "# A step runs unless its completion record exists: a resubmitted job resumes at its first unfinished step.",
    "# A stop signal to every process of the job (scancel --full, qsig) reaches the step too, whose launcher",
    "# waits for it; this shell then ends with 75 (resubmit to resume) instead of starting the next step.",
    "stopped=0",
    "trap 'stopped=1' TERM USR1",
    'step() { if [[ -f "$1" ]]; then echo "done: $1"; else shift; "$@"; fi; if ((stopped)); then exit 75; fi; }',
]


def step_line(step: Step) -> str:
    launcher = "launch" if step.distributed else "single"  # launch: every node and GPU of the job
    return f'step {shlex.quote(str(step.record))} "${{{launcher}[@]}}" -- {step.shell()}'


def render(a, stage: str, steps: list[Step], paths: dict[str, Path]) -> str:
    q = shlex.quote
    nodes, wall = (a.nodes, a.walltime) if stage == "stage1" else (1, a.stage2_walltime)
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
                           + ([a.raw] if a.raw else []))
        opts = f" --container {q(str(a.container))}" + "".join(f" --bind {q(b)}" for b in binds)
    if any(s.distributed for s in steps):
        mpi = " --mpi" if a.mpi else ""
        body += [f"launch=(jobs/run_stage.sh --nproc {a.procs_per_node}{mpi}{opts})"]
    body += [f"single=(jobs/run_stage.sh --single{opts})", "", *STEP_FUNCTION, ""]
    body += [step_line(s) for s in steps]
    hdr = header(a, stage, nodes, wall, paths["run"] / "logs")
    return "\n".join(["#!/bin/bash", *hdr, "", f"# sagecast {stage}, written by jobs/submit", *body]) + "\n"
