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


class RidgePath:
    """Centred closed-form ridge for a whole grid of penalties from one eigendecomposition.

    Primal (F x F) when there are at least as many rows as features, dual (N x N Gram matrix) otherwise, so wide
    designs (grid features, T scans x P presets) stay cheap and no F x K coefficient matrix is needed to predict.
    `alpha` is relative to the mean squared row norm of the centred features.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x)
        self.x_mean, self.y_mean = x.mean(axis=0), np.asarray(y, np.float64).mean(axis=0)
        self.xc = x - self.x_mean
        yc = np.asarray(y, np.float64) - self.y_mean
        self.dual = len(x) < x.shape[1]
        gram = (self.xc @ self.xc.T if self.dual else self.xc.T @ self.xc).astype(np.float64)
        self.scale = max(float(np.trace(gram)) / len(x), 1e-12)
        self.lam, self.u = np.linalg.eigh(gram)
        self.uty = self.u.T @ (yc if self.dual else self.xc.T.astype(np.float64) @ yc)

    def _solve(self, alpha: float) -> np.ndarray:
        d = 1.0 / (self.lam + alpha * self.scale)
        return self.u @ (self.uty * (d[:, None] if self.uty.ndim == 2 else d))

    def coef(self, alpha: float) -> np.ndarray:
        """w with y ≈ (x - x_mean) @ w + y_mean."""
        w = self._solve(alpha)
        return self.xc.T.astype(np.float64) @ w if self.dual else w

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return self.predict_path(x, (alpha,))[0]

    def predict_path(self, x: np.ndarray, alphas) -> list[np.ndarray]:
        """predict(x, a) for every a in `alphas`, projecting x on the eigenvectors once: (x·U) diag(d_a) (U'y)."""
        xc = np.asarray(x) - self.x_mean
        xu = ((xc @ self.xc.T).astype(np.float64) if self.dual else xc.astype(np.float64)) @ self.u
        return [self.y_mean + (xu / (self.lam + a * self.scale)) @ self.uty for a in alphas]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit y ≈ (x - x_mean) @ w + y_mean; returns (x_mean, y_mean, w). x (N, F), y (N,) or (N, K)."""
    path = RidgePath(x, y)
    return path.x_mean, path.y_mean, path.coef(alpha)


def ridge_predict(fit: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    xm, ym, w = fit
    return ym + (np.asarray(x, np.float64) - xm) @ w


def ridge_on_val(x_train, y_train, x_val, y_val, *, alphas=ALPHAS):
    """The fit whose alpha has the lowest val squared error; returns (alpha, (x_mean, y_mean, w)). Ties go to
    the larger alpha."""
    path = RidgePath(x_train, y_train)
    best, order = None, sorted(alphas, reverse=True)
    for alpha, pred in zip(order, path.predict_path(x_val, order), strict=True):
        err = float(((pred - y_val) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, alpha)
    return best[1], (path.x_mean, path.y_mean, path.coef(best[1]))


def ridge_leave_group_out(gram: np.ndarray, y: np.ndarray, groups: np.ndarray, fit_rows: np.ndarray,
                          alpha: float) -> np.ndarray:
    """Cross-fitted ridge predictions from one Gram matrix: row i is predicted by the centred ridge (RidgePath's
    model and penalty scale) fitted on the `fit_rows` outside i's group. gram = x @ x.T (N, N) of the raw rows,
    y (N, K), groups (N,), fit_rows (N,) bool → (N, K) float64.

    Centring is done on the Gram matrix (Kc = K - r1' - 1r' + s), and each group costs one n×n solve and one
    (group × n) @ (n × K) product, not a new eigendecomposition of a wide design: cheap for the day folds of
    stage 2's residual start, where the design has P·D = 8,192 columns.
    """
    gram, y = np.asarray(gram, np.float64), np.asarray(y, np.float64)
    out = np.zeros_like(y)
    for g in np.unique(groups):
        held, fit = groups == g, fit_rows & (groups != g)
        if fit.sum() < 2:
            raise ValueError(f"group {g!r}: fewer than 2 rows to fit on outside it")
        kff, khf = gram[np.ix_(fit, fit)], gram[np.ix_(held, fit)]
        r, s = kff.mean(axis=1), kff.mean()
        kc = kff - r[:, None] - r[None, :] + s
        khc = khf - khf.mean(axis=1, keepdims=True) - r[None, :] + s
        scale = max(float(np.trace(kc)) / fit.sum(), 1e-12)
        y_mean = y[fit].mean(axis=0)
        weights = np.linalg.solve(kc + alpha * scale * np.eye(fit.sum()), khc.T)  # (n_fit, n_held)
        out[held] = y_mean + weights.T @ (y[fit] - y_mean)
    return out
