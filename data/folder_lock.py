"""One writer per output folder: `with folder_lock(out, tool="sagecast-prepare"): ...`.

An exclusive `fcntl.flock` on `OUT/.lock`, which holds the writer's PID. The kernel releases the lock when
its holder exits in any way (SIGKILL included), so a lock is never stale; the file itself stays (deleting it
would let a third writer lock a new file while the second still holds the old one). A second writer gets a
UserError naming the holder's PID (exit 2 through `run_cli`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sagecast_common.cli import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder, *, tool: str):
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{folder} is being written by another {tool} (PID {holder}); wait for it to end "
                            f"or stop it, then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
