"""Image encoders shared by stage 1 (training) and stage 2 (the I-JEPA-style context encoder).

Stage 1 saves its backbones with `save_encoders`; stage 2 rebuilds them with `load_encoders` from that file
alone, without importing stage 1. Each entry records how to rebuild the module (`timm.create_model` args).
"""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from torch import nn

from sagecast_common.cli import UserError
from sagecast_common.runio import atomic_path


def encoder_kwargs(arch: str, *, img_size: int, patch_size: int | None = None) -> dict[str, Any]:
    """Extra `timm.create_model` kwargs: ViTs need the image and patch size (thermal wants a smaller patch)."""
    if arch.startswith(("vit", "deit")):
        kw: dict[str, Any] = {"img_size": img_size}
        if patch_size:
            kw["patch_size"] = patch_size
        return kw
    return {}


def build_encoder(arch: str, *, in_chans: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A timm backbone with no classifier head: forward(x) -> (B, D) pooled features."""
    return timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=0, **(kwargs or {}))


def save_encoders(path: str | os.PathLike, encoders: dict[str, tuple[nn.Module, dict[str, Any]]],
                  meta: dict[str, Any] | None = None) -> None:
    """Save {name: (module, spec)} where spec = {"arch", "in_chans", "kwargs"}; atomically."""
    payload = {
        "encoders": {name: {**spec, "state_dict": module.state_dict()} for name, (module, spec) in encoders.items()},
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_encoders(path: str | os.PathLike, *, map_location="cpu") -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Rebuild the encoders saved by `save_encoders`. A file that is not such a checkpoint (truncated, garbage,
    another format) is a UserError naming it; a mismatched state dict still raises (a code bug, not a file)."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        entries = payload["encoders"].items()
    except Exception as e:  # torch.load fails on a damaged file with many types (UnpicklingError, IndexError, ...)
        raise UserError(f"cannot read the stage-1 encoders {path} ({type(e).__name__}): it is damaged or not "
                        "written by sagecast-stage1-train; rerun stage-1 training") from None
    modules = {}
    for name, entry in entries:
        module = build_encoder(entry["arch"], in_chans=entry["in_chans"], kwargs=entry.get("kwargs"))
        module.load_state_dict(entry["state_dict"], strict=True)
        modules[name] = module
    return modules, payload.get("meta", {})
