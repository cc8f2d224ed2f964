"""The job scripts jobs/submit writes: scheduler directives (Cobalt, PBS Pro, Slurm) and the bash body.

Standard library only, like jobs/submit (run on bare login nodes). Every value in the body is shell-quoted;
values that reach a directive line were checked by jobs/submit (DIRECTIVE_VALUE) before they get here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

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
    tasks = a.gpus_per_node if a.mpi and stage == "stage1" else 1
    lines = [f"--job-name={job}", f"--account={a.project}", f"--partition={a.queue}", f"--nodes={nodes}",
             f"--ntasks-per-node={tasks}", f"--time={wall}", f"--output={logs / stage}-%j.out"]
    if a.gpus_per_node:
        lines.append(f"--gpus-per-node={a.gpus_per_node}")
    return [f"#SBATCH {x}" for x in lines]


def render(a, stage: str, paths: dict[str, Path], overrides: dict[str, list[str]]) -> str:
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
    if stage == "stage1":
        mpi = " --mpi" if a.mpi else ""
        body += [f"launch=(jobs/run_stage.sh --nproc {a.gpus_per_node}{mpi}{opts})"]
    body += [f"single=(jobs/run_stage.sh --single{opts})", ""]
    s1, run = q(str(paths["stage1"])), paths["run"]
    if stage == "stage1":
        prep = q(str(paths["prepared"]))
        if a.raw:
            body += [f"if [[ ! -f {prep}/index.parquet ]]; then",
                     f'    "${{single[@]}}" -- data.prepare --raw {q(str(a.raw))} --out {prep} '
                     + " ".join(q(x) for x in shlex.split(a.prepare_args)), "fi"]
        extra = "".join(f" {q(x)}" for x in overrides["stage1"])
        body += [f'"${{launch[@]}}" -- sagecast-stage1-train --preset {q(a.preset)} prepared={prep} '
                 f'run_dir={s1}{extra}',
                 f'"${{single[@]}}" -- sagecast-stage1-export --run {s1}',
                 f'"${{single[@]}}" -- sagecast-stage1-evaluate --run {s1}']
    else:
        extra = "".join(f" {q(x)}" for x in overrides["stage2"])
        out = {v: q(str(run / "stage2" / v)) for v in ("detr", "jepa")}
        body += [f'"${{single[@]}}" -- sagecast-stage2-train --variant {v} --preset {q(a.preset)} '
                 f"stage1_run={s1} run_dir={out[v]}{extra}" for v in out]
        body += [f'"${{single[@]}}" -- sagecast-stage2-evaluate --stage1-run {s1} --runs {out["detr"]} '
                 f'{out["jepa"]} --out {q(str(run / "stage2"))}']
    hdr = header(a, stage, nodes, wall, paths["run"] / "logs")
    return "\n".join(["#!/bin/bash", *hdr, "", f"# sagecast {stage}, written by jobs/submit", *body]) + "\n"
