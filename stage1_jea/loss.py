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
from sagecast_common.regularizers import covariance_off_diagonal, variance_hinge


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, sim: float = 25.0, std: float = 25.0,
                cov: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted VICReg loss; `terms` holds the weighted `inv`, `var` and `cov` parts (they sum to `loss`)."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"vicreg_loss wants two (B, D) tensors of one shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    inv = F.mse_loss(z_a, z_b)
    a, b = gather_with_grad(z_a), gather_with_grad(z_b)
    if a.shape[0] < 2:
        raise ValueError("vicreg_loss needs a global batch of at least 2 rows for the variance term")
    var = (variance_hinge(a) + variance_hinge(b)) / 2
    cov_term = covariance_off_diagonal(a) + covariance_off_diagonal(b)
    terms = {"inv": sim * inv, "var": std * var, "cov": cov * cov_term}
    return terms["inv"] + terms["var"] + terms["cov"], terms
