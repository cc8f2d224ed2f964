"""Progress bars: one style for every long loop (tqdm on stderr, rank 0 only, gone when the loop ends).

Off a terminal (batch logs) the bar refreshes every TQDM_MININTERVAL seconds (jobs/run_stage.sh sets 60),
so log files do not fill with carriage returns.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(iterable=None, *, desc: str, total: int | None = None, initial: int = 0, enabled: bool = True,
             unit: str = "it") -> tqdm:
    interval = 0.1 if sys.stderr.isatty() else float(os.environ.get("TQDM_MININTERVAL", 60))
    return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not enabled, leave=False, unit=unit,
                mininterval=interval, dynamic_ncols=True)
