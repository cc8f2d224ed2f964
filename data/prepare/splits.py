"""Whole-day train/val/test splits, assigned per node location period so splits never confound place.

Each local date gets a fixed pseudo-random u = hash(seed, date) in [0, 1): train below f_train, val below
f_train + f_val, else test. Adding days never moves an existing day, except in small sets: if a split would be
empty (≥ 3 days), the day whose u lies nearest that split's interval is moved into it, so every split has ≥ 1
day. The rule runs separately for each (node, registry location) period with ≥ 3 days: a node that moved
(W056 from Argonne to San Diego) gives days to train, val and test in each place, so neither the checkpoint
nor a penalty is picked in a domain the training never saw. A period of 1–2 days cannot feed three splits;
its days take the rule run over all dates of the index.

    index["split"] = split_by_location(index, fractions=(0.7, 0.15, 0.15), seed=0)
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(dates, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Local date (str) → split; see the module docstring for the rule."""
    u = {d: int.from_bytes(hashlib.sha256(f"{seed}:{d}".encode()).digest()[:8], "big") / 2**64
         for d in sorted(set(dates))}
    edges = np.concatenate([[0.0], np.cumsum(fractions) / np.sum(fractions)])
    split = {d: SPLITS[min(int(np.searchsorted(edges, x, side="right")) - 1, 2)] for d, x in u.items()}
    if len(u) >= 3:
        for k, name in enumerate(SPLITS):
            if name in split.values():
                continue
            sizes = Counter(split.values())
            donors = [d for d in u if sizes[split[d]] >= 2]
            split[min(donors, key=lambda d: max(edges[k] - u[d], u[d] - edges[k + 1], 0.0))] = name
    return split


def split_by_location(index: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> pd.Series:
    """Split of each row of an index with vsn, lat, lon and local_date columns, assigned per location period."""
    out = index["local_date"].map(assign_splits(index["local_date"], fractions, seed)).astype(object)
    for _, rows in index.groupby(["vsn", "lat", "lon"], sort=False):
        if rows["local_date"].nunique() >= len(SPLITS):
            out[rows.index] = rows["local_date"].map(assign_splits(rows["local_date"], fractions, seed))
    return out
