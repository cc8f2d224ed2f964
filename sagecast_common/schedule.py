"""The learning-rate schedule both stages use: linear warmup, then cosine decay to a fraction of the peak.

A pure function of the step, so a resumed run continues on exactly the same curve. One warmup convention:
step s (0-based) of the warmup runs at peak * (s + 1) / warmup_steps, so no step is spent at lr 0 and the
peak is reached on the last warmup step.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float, final_ratio: float = 0.001) -> float:
    """Warmup to `peak` over `warmup_steps`, then cosine from `peak` to `final_ratio * peak` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    q = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
    end = peak * final_ratio
    return end + (peak - end) * q


def set_lr(optimizer, lr: float) -> None:
    """Every group at `lr`, times the group's own `lr_scale` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
