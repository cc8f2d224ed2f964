"""The VICReg loss (Bardes et al. 2022) for two branches, with the variance/covariance over the global batch.

    loss, terms = vicreg_loss(z_rgb, z_thermal)          # z: (B_local, D) projector outputs

Same semantics as facebookresearch/vicreg `main_vicreg.py`: the invariance term is the MSE on this rank's
rows; the variance and covariance terms see every rank's rows (`gather_with_grad`, a no-op in one process),
so they are normalised by the true global batch. Under DDP (gradients averaged over ranks) the parameter
gradients then equal those of one process on the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sagecast_common.dist import gather_with_grad


def _off_diagonal_sq_sum(c: torch.Tensor) -> torch.Tensor:
    return c.pow(2).sum() - torch.diagonal(c).pow(2).sum()


def _hinge_std(x: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(x.var(dim=0) + 1e-4)).mean()


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, sim: float = 25.0, std: float = 25.0,
                cov: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted VICReg loss; `terms` holds the weighted `inv`, `var` and `cov` parts (they sum to `loss`)."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"vicreg_loss wants two (B, D) tensors of one shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    inv = F.mse_loss(z_a, z_b)
    a, b = gather_with_grad(z_a), gather_with_grad(z_b)
    N, D = a.shape
    if N < 2:
        raise ValueError("vicreg_loss needs a global batch of at least 2 rows for the variance term")
    a = a - a.mean(dim=0)
    b = b - b.mean(dim=0)
    var = (_hinge_std(a) + _hinge_std(b)) / 2
    cov_a = (a.T @ a) / (N - 1)
    cov_b = (b.T @ b) / (N - 1)
    cov_term = _off_diagonal_sq_sum(cov_a) / D + _off_diagonal_sq_sum(cov_b) / D
    terms = {"inv": sim * inv, "var": std * var, "cov": cov * cov_term}
    return terms["inv"] + terms["var"] + terms["cov"], terms
