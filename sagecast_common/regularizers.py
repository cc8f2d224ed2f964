"""VICReg's anti-collapse terms on one batch of embeddings, shared by the stage-1 loss and stage 2's EMA target.

    variance_hinge(z)            # mean over dimensions of relu(1 - std); pushes every std to >= 1
    covariance_off_diagonal(z)   # sum of squared off-diagonal covariances / D; decorrelates dimensions
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def variance_hinge(z: torch.Tensor, *, eps: float = 1e-4) -> torch.Tensor:
    """z (N, D) → mean over D of relu(1 - sqrt(var + eps))."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_off_diagonal(z: torch.Tensor) -> torch.Tensor:
    """z (N, D) → sum of squared off-diagonal entries of the covariance (divided by N - 1), divided by D."""
    N, D = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / max(N - 1, 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / D
