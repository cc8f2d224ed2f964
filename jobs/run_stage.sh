#!/usr/bin/env bash
# Scheduler-neutral launcher: run one Python module across every node of the current batch job.
#
#   jobs/run_stage.sh [options] -- TOOL [ARGS...]      # e.g. -- sagecast-stage1-train --preset quick run_dir=...
#
# TOOL is a sagecast console script (sagecast-stage1-train, ...; sagecast_pipeline/tools.py maps it to its
# module) or a module (stage1_jea.train); either way every process runs `python -m MODULE`, which torchrun and
# MPI launchers can start.
#
# It finds the job's hosts (COBALT_NODEFILE, PBS_NODEFILE or Slurm's SLURM_JOB_NODELIST; none of them, or
# --local: this host), the node count and the master address (first host), then starts
#   default : one torchrun per node, c10d rendezvous on MASTER:PORT, --nproc processes per node
#             (PBS: mpiexec -n N --ppn 1; Cobalt: mpirun -n N -npernode 1; Slurm: srun --ntasks-per-node=1;
#              local: plain torchrun --standalone)
#   --mpi   : mpiexec/mpirun/srun with one rank per GPU running python directly; the training reads the
#             OMPI_COMM_WORLD_* / PMI_* / SLURM_* variables (sagecast_common.dist.launch_env)
#   --single: one process on this node (export, evaluate, data preparation, stage 2); under Slurm as a job
#             step (srun -n1), so that `scancel --signal` reaches it
# and exits with the launcher's status, which is what the scheduler's afterok dependency checks, except:
#   75 (checkpointed, resubmit to resume) when a worker stopped with 75 (it leaves the file
#      $SAGECAST_STOP_MARKER: torchrun and srun would turn its 75 into 1), or when a stop signal sent to this
#      script (forwarded to the launcher, which is waited for) ended the launcher.
# Slurm steps get the job's --cpus-per-task, or its CPUs on the node shared out among the tasks (srun does not
# inherit --cpus-per-task); torchrun passes SIGUSR1 on to the workers as well as TERM/INT/HUP/QUIT
# (PET_SIGNALS_TO_HANDLE, read by torch >= 2.4).
#
# Options:
#   --local            ignore any scheduler variables: this host only (CPU testing: --local --nproc 2)
#   --nproc G          processes per node (GPUs per node; default 1)
#   --mpi | --single   launch modes described above
#   --container SIF    run every process inside `apptainer exec --nv [-B PATH]... SIF`
#   --bind PATH        bind mount for the container (repeatable: data root, run folder)
#   --port P           rendezvous / master port (default $MASTER_PORT, else 29500 + job id % 10000, so two jobs
#                      sharing a node do not meet in one rendezvous)
# Environment: PYTHON (interpreter, default python), MPIEXEC (MPI launcher executable), SAGECAST_JOB_ID,
# TQDM_MININTERVAL (progress-bar refresh in seconds when stderr is not a terminal; default 60).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

local_mode=0 mode=torchrun nproc=1 container="" port="${MASTER_PORT:-}"
binds=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --local) local_mode=1 ;;
        --nproc) nproc="$2"; shift ;;
        --mpi) mode=mpi ;;
        --single) mode=single ;;
        --container) container="$2"; shift ;;
        --bind) binds+=("$2"); shift ;;
        --port) port="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "run_stage.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ $# -lt 1 ]]; then
    echo "run_stage.sh: missing '-- MODULE [ARGS...]' (see --help)" >&2
    exit 2
fi
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
    echo "run_stage.sh: --nproc must be a positive integer, got '$nproc'" >&2
    exit 2
fi
module="$1"
shift
if [[ "$module" == sagecast-* ]]; then
    # console script -> module, from the one table of them (standard library only: any python3 reads it)
    if ! module=$(python3 -S "$(dirname "$0")/../sagecast_pipeline/tools.py" "$module" 2>&1); then
        echo "run_stage.sh: $module" >&2
        exit 2
    fi
fi

# Batch logs are files: tqdm's bars would rewrite themselves ten times a second into them. tqdm (>= 4.66)
# reads TQDM_* variables, so off a terminal the bars refresh once a minute unless the caller chose otherwise.
if [[ ! -t 2 ]]; then
    export TQDM_MININTERVAL="${TQDM_MININTERVAL:-60}"
fi

# The per-process prefix: the interpreter, inside the container when one is given.
python_cmd=()
if [[ -n "$container" ]]; then
    python_cmd=(apptainer exec --nv)
    for b in "${binds[@]}"; do python_cmd+=(-B "$b"); done
    python_cmd+=("$container")
fi
python_cmd+=("${PYTHON:-python}")

# First host of a Slurm node list such as nid[001-004,007],gpu2 (fallback when scontrol is absent).
first_slurm_host() {
    local first
    first=$(sed -E 's/^([^,[]*(\[[^]]*\][^,[]*)*).*/\1/' <<<"$1")
    sed -E 's/\[([^],-]*)[^]]*\]/\1/g' <<<"$first"
}

scheduler=local hostfile="" job_id="${SAGECAST_JOB_ID:-local-$$}"
if [[ $local_mode -eq 0 && -n "${COBALT_NODEFILE:-}" ]]; then
    scheduler=cobalt hostfile="$COBALT_NODEFILE" job_id="${COBALT_JOBID:-$job_id}"
elif [[ $local_mode -eq 0 && -n "${PBS_NODEFILE:-}" ]]; then
    scheduler=pbs hostfile="$PBS_NODEFILE" job_id="${PBS_JOBID:-$job_id}"
elif [[ $local_mode -eq 0 && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    scheduler=slurm job_id="${SLURM_JOB_ID:-$job_id}"
fi

case "$scheduler" in
    cobalt|pbs)
        # PBS lists a host once per requested chunk/cpu; count each host once, keeping file order.
        mapfile -t hosts < <(awk 'NF && !seen[$1]++ {print $1}' "$hostfile")
        ;;
    slurm)
        if command -v scontrol >/dev/null 2>&1; then
            mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
        else
            hosts=("$(first_slurm_host "$SLURM_JOB_NODELIST")")
        fi
        ;;
    local) hosts=("${HOSTNAME:-localhost}") ;;
esac
if [[ ${#hosts[@]} -eq 0 ]]; then
    echo "run_stage.sh: no hosts found in ${hostfile:-the $scheduler environment}" >&2
    exit 2
fi
nnodes="${#hosts[@]}"
if [[ "$scheduler" == slurm ]]; then
    nnodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-$nnodes}}"
fi
master="${hosts[0]}"
[[ "$scheduler" == local ]] && master=127.0.0.1
if [[ -z "$port" ]]; then
    # From the job id (its leading digits, else a checksum of it): a fixed port would let the torchrun of a
    # second job on the same node join the first job's rendezvous.
    id_number="${job_id%%[!0-9]*}"
    [[ -n "$id_number" ]] || id_number=$(cksum <<<"$job_id" | cut -d' ' -f1)
    ((${#id_number} <= 9)) || id_number="${id_number: -9}"
    port=$((29500 + 10#$id_number % 10000))
fi

# Start N processes, ppn per node, on `nodes` nodes, each running "$@" (the per-node launcher for this scheduler).
per_node() {
    local nodes="$1" n="$2" ppn="$3"
    shift 3
    case "$scheduler" in
        pbs) cmd=("${MPIEXEC:-mpiexec}" -n "$n" --ppn "$ppn" --hostfile "$hostfile" --cpu-bind none "$@") ;;
        cobalt)
            # Open MPI forwards only the variables named with -x.
            cmd=("${MPIEXEC:-mpirun}" -n "$n" -npernode "$ppn" -hostfile "$hostfile")
            for v in PATH LD_LIBRARY_PATH PYTHONPATH MASTER_ADDR MASTER_PORT SAGECAST_STOP_MARKER \
                PET_SIGNALS_TO_HANDLE; do
                [[ -n "${!v:-}" ]] && cmd+=(-x "$v")
            done
            cmd+=("$@")
            ;;
        slurm)
            cmd=(srun --nodes "$nodes" --ntasks "$n" --ntasks-per-node "$ppn" --kill-on-bad-exit=1)
            # srun does not inherit the batch job's --cpus-per-task (Slurm >= 22.05): without it every task,
            # its torchrun workers and their DataLoader workers would share one core. A whole-node job
            # (--exclusive) has no --cpus-per-task: its CPUs on this node are shared out among the tasks.
            cpus="${SLURM_CPUS_PER_TASK:-}"
            if [[ -z "$cpus" && "${SLURM_CPUS_ON_NODE:-}" =~ ^[0-9]+$ ]]; then
                cpus=$((SLURM_CPUS_ON_NODE / ppn))
            fi
            if [[ "$cpus" =~ ^[0-9]+$ ]] && ((cpus > 0)); then
                cmd+=(--cpus-per-task "$cpus")
            fi
            cmd+=("$@")
            ;;
        local) cmd=("$@") ;;
    esac
}

# A worker that checkpointed and exits 75 leaves this file (sagecast_common.training): the launchers above
# report 75 as a plain failure. Each node has its own, and the ranks on this node stop with the others.
SAGECAST_STOP_MARKER=$(mktemp -u "${TMPDIR:-/tmp}/sagecast-stopped.XXXXXX")
export SAGECAST_STOP_MARKER
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"

case "$mode" in
    single)
        if [[ "$scheduler" == slurm ]]; then
            per_node 1 1 1 "${python_cmd[@]}" -m "$module" "$@"
        else
            cmd=("${python_cmd[@]}" -m "$module" "$@")
        fi
        ;;
    mpi)
        export MASTER_ADDR="$master" MASTER_PORT="$port"
        if [[ "$scheduler" == local ]]; then
            cmd=("${MPIEXEC:-mpiexec}" -n "$nproc" "${python_cmd[@]}" -m "$module" "$@")
        else
            per_node "$nnodes" $((nnodes * nproc)) "$nproc" "${python_cmd[@]}" -m "$module" "$@"
        fi
        ;;
    torchrun)
        if [[ "$scheduler" == local ]]; then
            rdzv=(--standalone)
        else
            rdzv=(--rdzv-backend c10d --rdzv-endpoint "$master:$port" --rdzv-id "$job_id")
        fi
        per_node "$nnodes" "$nnodes" 1 "${python_cmd[@]}" -m torch.distributed.run --nnodes "$nnodes" \
            --nproc-per-node "$nproc" "${rdzv[@]}" -m "$module" "$@"
        ;;
esac

echo "run_stage.sh: $scheduler, $nnodes node(s) x $nproc, master $master, mode $mode" >&2
echo "+ ${cmd[*]}" >&2

# Run the launcher in the background and wait for it: a stop signal sent to this script alone (scancel
# --batch, qsig to the shell) is passed on, and the launcher, which may be saving a checkpoint, is waited for.
signalled=0
for sig in TERM USR1 INT; do
    # shellcheck disable=SC2064  # $sig is meant to expand now, $child when the signal comes
    trap "signalled=1; kill -s $sig \"\$child\" 2>/dev/null || true" "$sig"
done
# (A background command of a script starts with SIGINT and SIGQUIT ignored, which Python would keep: Ctrl-C
# on --local or --single must still reach the tool.)
(trap - INT QUIT; exec "${cmd[@]}") &
child=$!
status=0
wait "$child" || status=$?
while [[ $status -gt 128 ]] && kill -0 "$child" 2>/dev/null; do  # wait was interrupted by a trapped signal
    status=0
    wait "$child" || status=$?
done
if [[ -e "$SAGECAST_STOP_MARKER" ]]; then
    rm -f "$SAGECAST_STOP_MARKER"
    if ((status != 0)); then status=75; fi
elif ((signalled && status != 0)); then
    status=75
fi
exit "$status"
