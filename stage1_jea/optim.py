"""Optimiser and learning-rate schedule for stage 1.

LARS (timm) as in VICReg: biases and norm weights (every parameter with ndim <= 1) get neither weight decay
nor LARS adaptation (timm's Lars adapts a group only when its weight_decay != 0). LARS scales each weight
tensor's step to lr * trust_coefficient * ||w|| / ||g||, so one step moves a weight by a relative
lr * trust_coefficient (before momentum): VICReg's eta 0.001 with lr 0.075 is 7.5e-5 per step, and the
quick preset's weights ended 1.2 % from their initialisation after 225 steps. Hence AdamW for the small-batch
quick preset and LARS with a larger trust coefficient for the large-batch full preset (see train.PRESETS).
The lr is set every step from sagecast_common.schedule.lr_at.
"""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn


def build_optimizer(model: nn.Module, *, name: str, weight_decay: float, trust_coefficient: float = 0.001,
                    momentum: float = 0.9):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "lars":
        # lr is overwritten every step by lr_at()
        return Lars(groups, lr=0.0, momentum=momentum, trust_coeff=trust_coefficient, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0)
    raise ValueError(f"optimizer={name!r}: expected 'lars' or 'adamw'")

