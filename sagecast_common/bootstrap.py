"""Paired bootstrap over whole test days (and seeds) for ratio metrics such as skill = 1 − MSE/MSE_ref.

Errors within a day are strongly correlated (one weather situation), so the resampling unit is the day: every
replicate draws the test days with replacement — the same draw for every method, which makes differences
paired — and, for a method trained with K seeds, K seeds with replacement (its error is the mean over them).

    sums = {"persistence": day_sums(sq_err, mask, day)[None], "detr": np.stack([...per seed...])}
    totals, reps = replicate_totals(sums, n_boot=1000)       # point totals (H,), replicates (n_boot, H)
    lo, hi = interval(1 - reps["detr"] / reps["persistence"])
"""

from __future__ import annotations

import numpy as np


def day_sums(values: np.ndarray, mask: np.ndarray, day_index: np.ndarray, n_days: int) -> np.ndarray:
    """(N, H, P) per-slot values summed over valid slots of each day → (n_days, H); day_index (N,) in 0..n_days-1."""
    out = np.zeros((n_days, values.shape[1]))
    np.add.at(out, day_index, np.where(mask, values, 0.0).sum(-1))
    return out


def replicate_totals(sums: dict[str, np.ndarray], *, n_boot: int = 1000,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """sums[name] (K seeds, days, H) → point totals (H,) and bootstrap replicate totals (n_boot, H).

    Totals are sums over days of the seed-mean. All methods share each replicate's day draw.
    """
    rng = np.random.default_rng(seed)
    n_days = next(iter(sums.values())).shape[1]
    days = rng.integers(0, n_days, (n_boot, n_days))
    point, reps = {}, {}
    for name, s in sums.items():
        K = s.shape[0]
        per_seed = s[:, days].sum(2)  # (K, n_boot, H)
        seeds = rng.integers(0, K, (n_boot, K))
        point[name] = s.sum(1).mean(0)
        reps[name] = per_seed[seeds, np.arange(n_boot)[:, None]].mean(1)
    return point, reps


def interval(replicates: np.ndarray, *, level: float = 0.95) -> np.ndarray:
    """Percentile interval over the first axis → (2, ...) [lo, hi]."""
    tail = 100 * (1 - level) / 2
    return np.nanpercentile(replicates, [tail, 100 - tail], axis=0)


def distinguishable(ci) -> bool:
    """A difference is distinguishable from 0 when its interval excludes 0."""
    return bool(ci[0] > 0 or ci[1] < 0)


def day_labels(*columns) -> tuple[np.ndarray, int]:
    """(day index 0..n-1 per row, n) from columns that together name a day, e.g. (vsn, local_date)."""
    keys = np.asarray(["\x1f".join(map(str, parts)) for parts in zip(*columns, strict=True)], dtype=object)
    _, index = np.unique(keys, return_inverse=True)
    return index, int(index.max()) + 1 if len(index) else 0


def totals_by_day(values: np.ndarray, day_index: np.ndarray, n_days: int) -> np.ndarray:
    """(N, ...) per-row values summed per day → (n_days, ...)."""
    out = np.zeros((n_days, *values.shape[1:]))
    np.add.at(out, day_index, values)
    return out
