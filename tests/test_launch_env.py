"""Rank detection from each launcher's variables (sagecast_common.dist.launch_env, first_slurm_host)."""

from __future__ import annotations

import pytest

from sagecast_common.dist import LaunchEnv, first_slurm_host, launch_env


def test_no_launcher_is_one_process():
    env = launch_env({"PATH": "/usr/bin", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"})
    assert env == LaunchEnv() and not env.distributed and env.is_main


@pytest.mark.parametrize(
    ("variables", "launcher", "rank", "local", "size"),
    [
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, "torchrun", 5, 1, 8),
        ({"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "16"},
         "openmpi", 9, 1, 16),
        ({"PMI_RANK": "6", "PMI_LOCAL_RANK": "2", "PMI_SIZE": "8"}, "pmi", 6, 2, 8),
        ({"SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"},
         "slurm", 3, 3, 4),
    ],
)
def test_each_launcher(variables, launcher, rank, local, size):
    env = launch_env({**variables, "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    assert (env.launcher, env.rank, env.local_rank, env.world_size) == (launcher, rank, local, size)
    assert (env.master_addr, env.master_port) == ("node7", 1234)
    assert env.distributed and env.is_main == (rank == 0)


def test_torchrun_wins_inside_an_mpi_or_slurm_allocation():
    env = launch_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0",
                      "OMPI_COMM_WORLD_SIZE": "1", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"})
    assert (env.launcher, env.rank, env.world_size) == ("torchrun", 1, 2)


def test_missing_local_rank_falls_back_to_rank():
    assert launch_env({"PMI_RANK": "1", "PMI_SIZE": "2"}).local_rank == 1


@pytest.mark.parametrize("variables", [{"RANK": "4", "WORLD_SIZE": "4"}, {"PMI_RANK": "x", "PMI_SIZE": "2"}])
def test_bad_launcher_variables_raise(variables):
    with pytest.raises(ValueError, match="torchrun|pmi"):
        launch_env(variables)


@pytest.mark.parametrize("var", ["PBS_NODEFILE", "COBALT_NODEFILE"])
def test_master_is_first_host_of_the_nodefile(tmp_path, var):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("\nx3005c0s7b0n0.hsn.cm.polaris.alcf.anl.gov\nx3005c0s7b1n0\n")
    env = launch_env({"PMI_RANK": "0", "PMI_SIZE": "8", var: str(nodefile)})
    assert env.master_addr == "x3005c0s7b0n0.hsn.cm.polaris.alcf.anl.gov"
    assert launch_env({"PMI_RANK": "0", "PMI_SIZE": "8", var: str(tmp_path / "gone")}).master_addr == "127.0.0.1"


def test_master_from_slurm_node_list_and_master_addr_wins():
    slurm = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "gpu[12-13]"}
    assert launch_env(slurm).master_addr == "gpu12"
    assert launch_env({**slurm, "MASTER_ADDR": "login1"}).master_addr == "login1"


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("gpu2", "gpu2"),
        ("gpu2,gpu3", "gpu2"),
        ("nid[001-004,007],gpu2", "nid001"),
        ("nid[007]", "nid007"),
        ("x1000c0s0b0n[0-1]", "x1000c0s0b0n0"),
        ("rack[1-2]-node[01-04],login", "rack1-node01"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_first_slurm_host_rejects_empty():
    with pytest.raises(ValueError):
        first_slurm_host(" ")
