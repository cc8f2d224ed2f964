"""A private single-node Slurm on 127.0.0.1 for tests: munged, slurmctld and slurmd, all in one temp folder.

    from tests.slurm_cluster import SlurmCluster
    with SlurmCluster(tmp_dir) as cluster:           # or the session fixture `slurm` (tests/test_slurm.py)
        subprocess.run(["sbatch", ...], env=cluster.env)   # SLURM_CONF points the clients at this cluster
        cluster.job("12")["JobState"]                       # scontrol show job, as a dict

Nothing outside the folder is read or written: munged gets its own key, socket and seed file, the daemons
their own ports, spool and state folders, and the clients find the config through SLURM_CONF. No systemd and
no cgroups are needed (proctrack/linuxproc, task/none), so it runs as root in a container. The node has two
GPU gres backed by empty files (nothing reads them) and reports twice the host's CPUs (at least 4), so two
small jobs of 2 CPUs run side by side even on a 2-core machine. The folder's path must be short (under about 70
characters, as pytest's temporary folders are): munged's and slurmd's sockets live in it. Jobs stay visible to
`scontrol` for an hour after they end (MinJobAge): without slurmdbd there is no sacct, and scontrol shows state
and exit code. Every daemon is stopped by its PID on exit.

Run `python -m tests.slurm_cluster` to start one in ./slurm-cluster and print how to use it (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

GPUS = 2


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    def __init__(self, root: Path, *, cpus: int | None = None):
        self.root = Path(root).resolve()
        self.cpus = cpus or max(4, 2 * (os.cpu_count() or 1))
        self.node = socket.gethostname().split(".")[0]
        self.pids: dict[str, int] = {}
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "MUNGE_SOCKET": str(self.socket)}

    # -- setup -----------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        if len(str(self.socket)) > 100:  # a unix socket path has at most 107 bytes
            raise RuntimeError(f"{self.root}: too long a path for the cluster's sockets; use a shorter folder")
        for d in ("munge", "state", "spool", "log", "dev"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for i in range(GPUS):
            (self.root / "dev" / f"gpu{i}").touch()
        ctld_port, slurmd_port = free_ports(2)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=sagecast-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            f"SlurmUser={user}", f"SlurmdUser={user}",
            "AuthType=auth/munge", f"AuthInfo=socket={self.socket}", "CredType=cred/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            # Fast enough for tests: a finished job frees its node at once, a dependency is checked every second.
            "SchedulerParameters=defer_batch=0", "MinJobAge=3600", "KillWait=5", "ReturnToService=2",
            "SlurmdParameters=config_overrides", "GresTypes=gpu",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Gres=gpu:{GPUS} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        (self.root / "gres.conf").write_text(f"Name=gpu File={r}/dev/gpu[0-{GPUS - 1}]\n")

    def start(self) -> SlurmCluster:
        self.write_config()
        m = self.root / "munge"
        self.daemon("munged", ["munged", "--force", f"--socket={self.socket}", f"--key-file={m}/munge.key",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"], m / "munged.pid")
        self.daemon("slurmctld", ["slurmctld", "-c", "-f", str(self.conf)], self.root / "slurmctld.pid")
        self.daemon("slurmd", ["slurmd", "-f", str(self.conf), "-N", self.node], self.root / "slurmd.pid")
        self.wait_for(lambda: re.search(r"State=(IDLE|MIXED)\b", self.scontrol("show", "node", self.node)),
                      "the node to be idle", 30)
        return self

    def daemon(self, name: str, cmd: list[str], pid_file: Path) -> None:
        """Start a daemon that forks itself; its PID comes from the PID file it writes."""
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"{name} failed to start (exit {out.returncode}): {out.stderr}{self.logs()}")
        self.wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip(), f"{name}'s PID file", 20)
        self.pids[name] = int(pid_file.read_text().split()[0])

    def wait_for(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        files = [self.root / "log" / "slurmctld.log", self.root / "log" / "slurmd.log",
                 self.root / "munge" / "munged.log"]
        return "".join(f"\n--- {f.name} (tail)\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
                       for f in files if f.is_file())

    def stop(self) -> None:
        """TERM each daemon by its PID (slurmd, slurmctld, munged), then KILL what is still there after 10 s."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries ---------------------------------------------------------------------------------------------
    def scontrol(self, *args: str) -> str:
        out = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o`: {'JobState': 'COMPLETED', 'ExitCode': '0:0', ...}."""
        text = self.scontrol("show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Poll until the job is in one of `states`; its scontrol record then."""
        info: dict[str, str] = {}

        def reached():
            nonlocal info
            info = self.job(job_id)
            return info.get("JobState") in states

        self.wait_for(reached, f"job {job_id} to reach {'/'.join(states)} (now {info.get('JobState')}, "
                      f"{info.get('Reason')})", timeout)
        return info


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone (the daemons fork away from us, but be safe)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def available() -> bool:
    return all(shutil.which(p) for p in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol"))


if __name__ == "__main__":
    if not available():
        sys.exit("slurm-wlm and munge are not installed: apt-get install -y slurm-wlm munge")
    with SlurmCluster(Path("slurm-cluster")) as c:
        print(f"Slurm is up (node {c.node}, {c.cpus} CPUs, {GPUS} GPU gres). In another shell:\n"
              f"  export SLURM_CONF={c.conf}\n  sinfo; jobs/submit --scheduler slurm --project x --queue debug "
              "--gpus-per-node 0 ...\nCtrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
