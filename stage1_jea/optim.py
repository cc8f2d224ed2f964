"""Optimiser and learning-rate schedule for stage 1.

LARS (timm) as in VICReg: biases and norm weights (every parameter with ndim <= 1) get neither weight decay
nor LARS adaptation (timm's Lars adapts a group only when its weight_decay != 0). AdamW is the alternative.
The lr is set every step from sagecast_common.schedule.lr_at.
"""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn


def build_optimizer(model: nn.Module, *, name: str, weight_decay: float, momentum: float = 0.9):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "lars":
        # lr is overwritten every step by lr_at(); trust_coeff 0.001 is the VICReg eta.
        return Lars(groups, lr=0.0, momentum=momentum, trust_coeff=0.001, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0)
    raise ValueError(f"optimizer={name!r}: expected 'lars' or 'adamw'")
