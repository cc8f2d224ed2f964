"""Stage-2 losses: plain functions returning (loss, terms), each term logged under a stable name."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sagecast_common.regularizers import covariance_off_diagonal, variance_hinge


def forecast_loss(pred, target, mask, *, kind: str = "mse") -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over valid (B, H, P) slots of the per-dimension loss; pred/target (B, H, P, D), mask (B, H, P)."""
    per = (F.mse_loss if kind == "mse" else F.smooth_l1_loss)(pred, target, reduction="none").mean(-1)
    loss = (per * mask).sum() / mask.sum().clamp(min=1)
    return loss, {kind: loss.item()}


def variance_covariance(z: torch.Tensor, *, eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """VICReg's variance (std ≥ 1 per dimension) + covariance (off-diagonal → 0) terms on z (N, D)."""
    var, off = variance_hinge(z, eps=eps), covariance_off_diagonal(z)
    return var + off, {"var": var.item(), "cov": off.item()}
