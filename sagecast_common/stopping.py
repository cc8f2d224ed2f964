"""Stop requests from the batch system: SIGTERM/SIGUSR1 → checkpoint at the next step boundary, exit 75.

Slurm and PBS signal *every* process of a job, DataLoader workers included. Workers ignore the stop signals
(`ignore_stop_signals`, run by every loader's worker_init_fn), so they keep feeding batches until the main
process has saved; should one die anyway (a signal before its init ran), `loader_died` tells the loop that
the death is the stop it was already asked for, not a crash.

    with StopSignals() as stop:
        for batch in loader:
            ...
            if stop.requested: checkpoint(); return
"""

from __future__ import annotations

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


def ignore_stop_signals() -> None:
    """For DataLoader workers: the main process decides when to stop, and needs batches until it has saved."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def loader_died(error: BaseException, stop: StopSignals) -> bool:
    """True when `error` is a DataLoader worker's death after a stop request (the scheduler signalled it too)."""
    return stop.requested and isinstance(error, RuntimeError) and "DataLoader worker" in str(error)
