"""JEPA-variant training with `target=ema`: EMA target encoder, I-JEPA target normalisation, anti-collapse term.

Used by stage2_forecast.train (target=ema needs finetune=true: with frozen encoders the EMA copy never moves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stage2_forecast.loss import variance_covariance
from stage2_forecast.models import encode_images


@torch.no_grad()
def ema_target_terms(model, ema, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """EMA targets layer-normalised per vector as I-JEPA does, and the anti-collapse term.

    The variance-covariance term acts on the encoder embeddings (the online encoder at t, which the target
    encoder follows by EMA) — not on the forecasts, where it would fight the shrinkage toward climatology that
    a good long-horizon forecast needs.
    """
    target = encode_images(ema, batch["tgt_rgb"], batch["tgt_thermal"], mean=model.mean, std=model.std,
                           img_size=model.img_size)
    with torch.enable_grad():
        z = model.context(batch)[batch["ctx_mask"][:, 0]]
        vc, terms = variance_covariance(z)
    return F.layer_norm(target, target.shape[-1:]), vc, terms


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, *, momentum: float) -> None:
    """Parameters and floating buffers (BatchNorm running statistics) follow the online encoder; integer
    buffers (batch counters) are copied."""
    online_state = online.state_dict()
    for name, value in ema.state_dict().items():
        src = online_state[name].detach()
        value.lerp_(src, 1 - momentum) if value.is_floating_point() else value.copy_(src)
