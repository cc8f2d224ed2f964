"""Checkpoints for both stages: atomic saves, `weights_only` loads that fail loudly, and the schedule check.

A training checkpoint stores, besides weights and optimiser, the `schedule` dict the lr depends on (total
steps, steps per epoch, number of training samples and the schedule's config keys), fixed at the first run.
`check_schedule` refuses to resume when any of it changed (a grown or shrunk prepared folder changes steps
per epoch, so the lr would jump) unless the user forces it.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from sagecast_common.cli import UserError
from sagecast_common.runio import atomic_path


def save_checkpoint(path: str | Path, **payload: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`; any failure raises UserError saying what to do (never a silent restart)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found: train first") from None
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"cannot load checkpoint {path} ({type(e).__name__}: {reason}); move it away to start "
                        "a fresh run, or point run_dir elsewhere") from e


def load_state(module: torch.nn.Module, state: dict, *, path: str | Path, optional: Collection[str] = ()) -> None:
    """`module.load_state_dict(state)`, with a UserError when the checkpoint was made for another model.

    Keys in `optional` may be absent from `state` (weights the module already holds from elsewhere, such as
    frozen encoders rebuilt from their own file); every other key must match.
    """
    try:
        result = module.load_state_dict(state, strict=False)
        absent = [k for k in result.missing_keys if k not in optional]
        if absent or result.unexpected_keys:
            raise RuntimeError(f"missing keys {absent[:3]}, unexpected keys {result.unexpected_keys[:3]}")
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{path} does not fit the configured model ({first}); use a new run_dir") from e


def check_schedule(saved: dict, current: dict, *, force: bool, path: str | Path) -> None:
    """Refuse (UserError) to resume when anything the lr depends on differs from the first run's values."""
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed and not force:
        desc = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise UserError(f"refusing to resume {path}: the schedule changed ({desc}); the lr is a function of the "
                        f"step and the {saved.get('total_steps')} total steps fixed at the first run, so it would "
                        "jump. Pass force_schedule=true (--force-schedule) to accept that, or use a new run_dir")
