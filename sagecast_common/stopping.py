"""Stop requests from the batch system: SIGTERM/SIGUSR1 → checkpoint at the next step boundary, exit 75.

Slurm and PBS signal *every* process of a job, DataLoader workers included. Workers are started inside
`stop_signals_blocked()` (so they are born with the signals blocked, and none can die before its init runs)
and ignore them from their worker_init_fn on (`ignore_stop_signals`): they keep feeding batches until the
main process has saved, and end with it. A signal that arrives while workers start waits, then reaches the
main process.

    with StopSignals() as stop:
        for batch in loader:
            ...
            if stop.requested: checkpoint(); return
"""

from __future__ import annotations

import contextlib
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Context manager: records SIGTERM/SIGUSR1 instead of dying; restores the previous handlers on exit."""

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def _on_signal(self, signum, frame):
        self.received.append(signum)  # acted on at the next step boundary, where a checkpoint is consistent

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_signals_blocked():
    """Block the stop signals in this thread for the block; processes started inside inherit the mask."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """For DataLoader workers: the main process decides when to stop, and needs batches until it has saved."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since birth; pending ones are discarded
