"""Embedding statistics and the linear probe both stages report: RankMe and ridge with penalty chosen on val.

RankMe, as this project defines it (after Garrido et al., 2023): centre the (N, D) matrix over its rows,
take its singular values s, p = s / sum(s) + 1e-7, and report exp(-sum p log p). Centring makes a constant
offset (every row the same vector) count as collapsed (RankMe ~ 1) rather than as one extra direction.

Ridge: centred closed form; the dual (N x N) system is solved when there are fewer rows than features, so
wide designs stay cheap. `alpha` is relative to the mean squared row norm of the centred features, so the
same grid fits standardised features of any width.
"""

from __future__ import annotations

import numpy as np

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """Effective rank of the centred rows of `x` (N, D); 1 = fully collapsed, min(N, D) = isotropic."""
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / max(s.sum(), eps) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit y ≈ (x - x_mean) @ w + y_mean; returns (x_mean, y_mean, w). x (N, F), y (N,) or (N, K)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    scale = alpha * max((xc**2).sum() / len(x), 1e-12)
    if len(x) < x.shape[1]:
        w = xc.T @ np.linalg.solve(xc @ xc.T + scale * np.eye(len(x)), yc)
    else:
        w = np.linalg.solve(xc.T @ xc + scale * np.eye(x.shape[1]), xc.T @ yc)
    return xm, ym, w


def ridge_predict(fit: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    xm, ym, w = fit
    return ym + (np.asarray(x, np.float64) - xm) @ w


def ridge_on_val(x_train, y_train, x_val, y_val, *, alphas=ALPHAS):
    """The fit whose alpha has the lowest val squared error; returns (alpha, fit). Ties go to the larger alpha."""
    best = None
    for alpha in sorted(alphas, reverse=True):
        fit = ridge_fit(x_train, y_train, alpha)
        err = float(((ridge_predict(fit, x_val) - y_val) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, alpha, fit)
    return best[1], best[2]
