"""Distributed launch: one process by default, DDP when a launcher says so.

Every batch system starts ranks differently. `launch_env()` reads whichever launcher variables are present
(torchrun, Open MPI, PALS/PMI on Polaris, Slurm's srun) and returns one `LaunchEnv`; training code only ever
sees that. `gather_with_grad` is the one cross-rank gather in the project (used by the VICReg loss); `rank_shard` is
the one way both stages split an epoch between ranks (every rank gets the same number of samples, so the
same number of batches: unequal counts would leave one rank waiting in a collective forever).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class LaunchEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_host_from_nodefile(var: str, environ) -> str | None:
    path = environ.get(var)
    if not path or not Path(path).is_file():
        return None
    for line in Path(path).read_text().splitlines():
        if line.strip():
            return line.strip()
    return None


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list such as `nid[001-004,007],gpu2` (no `scontrol` needed)."""
    # The first entry ends at the first comma outside brackets; each [range] in it contributes its first value.
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    if not first:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)


def _master_addr(environ) -> str:
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    for var in ("PBS_NODEFILE", "COBALT_NODEFILE"):
        host = _first_host_from_nodefile(var, environ)
        if host:
            return host
    if environ.get("SLURM_JOB_NODELIST"):
        return first_slurm_host(environ["SLURM_JOB_NODELIST"])
    return "127.0.0.1"


def launch_env(environ=None) -> LaunchEnv:
    """Rank, local rank, world size and rendezvous address from the launcher's environment.

    Order matters: torchrun sets RANK even when it runs inside an MPI or Slurm allocation, so it wins.
    Slurm is only trusted inside an `srun` step (SLURM_STEP_NUM_TASKS), not in the batch script itself,
    where SLURM_NTASKS describes the allocation rather than this process.
    """
    env = os.environ if environ is None else environ
    candidates = (
        ("torchrun", "RANK", "LOCAL_RANK", "WORLD_SIZE"),
        ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("pmi", "PMI_RANK", "PMI_LOCAL_RANK", "PMI_SIZE"),
        ("slurm", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS"),
    )
    for name, rank_var, local_var, size_var in candidates:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
                local = int(env.get(local_var, rank))
            except ValueError as e:
                raise ValueError(f"{name} launcher variables are not integers: {e}") from None
            if not 0 <= rank < size:
                raise ValueError(f"{name} launcher gave rank {rank} outside world size {size}")
            return LaunchEnv(
                rank=rank,
                local_rank=local,
                world_size=size,
                master_addr=_master_addr(env),
                master_port=int(env.get("MASTER_PORT", 29500)),
                launcher=name,
            )
    return LaunchEnv()


def setup(env: LaunchEnv, *, device: str = "auto") -> torch.device:
    """Pick the device and, under a launcher, join the process group (NCCL on GPU, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if env.distributed and not torch_dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
        )
    return dev


def teardown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.zeros_like(x) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        # Each rank's loss depends on every rank's rows; sum the gradients for our rows from all ranks.
        stacked = torch.stack(grads)
        torch_dist.all_reduce(stacked)
        return stacked[torch_dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (N_local, ...) from all ranks along dim 0; gradients flow back to each owner.

    A no-op in one process.
    """
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


def rank_shard(n: int, *, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """This rank's sample indices for `epoch`: a (seed, epoch) permutation of range(n), cut to equal shares.

    The n % world_size samples left over are dropped for this epoch (a different few each epoch), so every rank
    runs the same number of batches.
    """
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)
