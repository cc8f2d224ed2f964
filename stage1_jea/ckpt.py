"""Stage-1 checkpoints: self-describing, atomic, loaded with `weights_only=True`; a load error raises.

`RUN/ckpt.pt` holds the unwrapped model, the optimiser, step/epoch counters, the run config, the schedule
length fixed at the start, and this process's RNG states (torch, CUDA, numpy, python). The data order is a
function of (seed, epoch), so `epoch` and `batches_done` pin it down.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sagecast_common.runio import atomic_path


def rng_state() -> dict[str, Any]:
    # the legacy global numpy RNG is what third-party augmentation code draws from, so it is what we save
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: str | Path, **payload: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({**payload, "rng": rng_state()}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot load checkpoint {path}: {e}. Move it away to start a fresh run.") from e
