"""Fair baselines for stage 1: a linear alignment fitted on train, raw-pixel features, layout targets.

    align = fit_cca(x_train, y_train, reg=0.1, k=32)      # regularised CCA between two feature sets
    zx, zy = align.transform(x_test, y_test)             # both in one k-dim space; retrieval by cosine
    result = aligned_retrieval(x_by_split, y_by_split)   # reg, k picked on val; top-1/5 on test
    pixels = raw_pixels(prepared, rows, size=8)          # {"rgb": (N, 8*8*3), "thermal": (N, 8*8)}
    y = region_cloud_fraction(prepared, rows, grid=2)    # (N, 4): data.sky's cloud rule per 2×2 region

Random-init encoders have unaligned coordinates, so their retrieval through random projectors is at chance by
construction. CCA fitted on train asks the fair question: what can a linear map recover from these features?
The same alignment is applied to trained features, random-init features and raw pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from data.sky import centre_elevation, cloud_mask
from sagecast_common.bootstrap import day_labels, interval, replicate_totals, totals_by_day

REGS = (1e-3, 1e-2, 1e-1, 1.0)  # ridge on each covariance, relative to its mean eigenvalue
COMPONENTS = (8, 16, 32, 64, 128)


def _inv_sqrt_path(c: np.ndarray, regs) -> dict[float, np.ndarray]:
    """(C + reg·mean eig·I)^-1/2 for every reg from one eigendecomposition (the eigenvectors are shared)."""
    w, v = np.linalg.eigh(c)
    scale = max(float(w.mean()), 1e-12)
    return {r: (v / np.sqrt(np.maximum(w + r * scale, 1e-12))) @ v.T for r in regs}


@dataclass(frozen=True)
class Alignment:
    mean_x: np.ndarray
    mean_y: np.ndarray
    wx: np.ndarray  # (D_x, k): centred x -> canonical variates
    wy: np.ndarray  # (D_y, k)

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.mean_x) @ self.wx, (y - self.mean_y) @ self.wy


def cca_path(x: np.ndarray, y: np.ndarray, regs) -> dict[float, Alignment]:
    """Regularised CCA for every reg, all canonical pairs (slice `wx[:, :k]` for the k leading ones): whiten
    each side ((C + reg·mean eig·I)^-1/2), SVD of the whitened cross-covariance. Exact for y = x·A with A
    invertible: every canonical correlation is 1."""
    if len(x) != len(y):
        raise ValueError(f"fit_cca: {len(x)} rows of x but {len(y)} of y")
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = (x - mx).astype(np.float64), (y - my).astype(np.float64)
    n = len(x) - 1
    ix, iy = _inv_sqrt_path(xc.T @ xc / n, regs), _inv_sqrt_path(yc.T @ yc / n, regs)
    cxy = xc.T @ yc / n
    out = {}
    for r in regs:
        u, _, vt = np.linalg.svd(ix[r] @ cxy @ iy[r], full_matrices=False)
        out[r] = Alignment(mx, my, ix[r] @ u, iy[r] @ vt.T)
    return out


def fit_cca(x: np.ndarray, y: np.ndarray, *, reg: float, k: int) -> Alignment:
    """Regularised CCA keeping the k leading canonical pairs (see `cca_path`)."""
    a = cca_path(x, y, [reg])[reg]
    return Alignment(a.mean_x, a.mean_y, a.wx[:, :k], a.wy[:, :k])


def retrieval(query: np.ndarray, keys: np.ndarray, ks=(1, 5), *, days: np.ndarray | None = None,
              n_boot: int = 1000) -> dict:
    """Row i of `query` should find row i of `keys` (cosine); top-k accuracy.

    With `days` (a day label per row), also `top{k}_ci`: a 95 % interval from resampling the QUERIES by whole
    days (the gallery stays every key), so it covers which days were tested, not the gallery's size."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    sim = q @ k.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)  # how many keys beat the true partner
    out = {f"top{n}": float((rank < n).mean()) for n in ks}
    if days is not None:
        index, n_days = day_labels(days)
        hits = np.stack([rank < n for n in ks], axis=1).astype(np.float64)
        _, reps = replicate_totals({"hits": totals_by_day(hits, index, n_days)[None],
                                    "n": totals_by_day(np.ones((len(rank), 1)), index, n_days)[None]},
                                   n_boot=n_boot)
        ci = interval(reps["hits"] / reps["n"])
        out.update({f"top{n}_ci": ci[:, i].tolist() for i, n in enumerate(ks)})
    return out


def aligned_retrieval(x: dict[str, np.ndarray], y: dict[str, np.ndarray], *,
                      test_days: np.ndarray | None = None) -> dict:
    """CCA fitted on train, (reg, k) picked by mean val top-5 of both directions, top-1/5 on test (with day-
    bootstrap intervals when `test_days` labels the test rows)."""
    def score(align: Alignment, split: str, days=None) -> dict:
        zx, zy = align.transform(x[split], y[split])
        return {"rgb_to_thermal": retrieval(zx, zy, days=days), "thermal_to_rgb": retrieval(zy, zx, days=days)}

    best, best_val = None, -1.0
    widest = min(x["train"].shape[1], y["train"].shape[1])
    for reg, full in cca_path(x["train"], y["train"], REGS).items():
        for k in sorted({min(k, widest) for k in COMPONENTS}):
            align = Alignment(full.mean_x, full.mean_y, full.wx[:, :k], full.wy[:, :k])
            r = score(align, "val")
            val = (r["rgb_to_thermal"]["top5"] + r["thermal_to_rgb"]["top5"]) / 2
            if val > best_val:
                best, best_val = (reg, k, align), val
    reg, k, align = best
    return {"space": "CCA fitted on train (cosine)", "cca_reg": reg, "cca_k": k, "val_top5_mean": best_val,
            **score(align, "test", test_days)}


def _frames(prepared: Path, name: str, rows: np.ndarray, chunk: int = 1024):
    array = np.load(prepared / f"{name}.npy", mmap_mode="r")
    for start in range(0, len(rows), chunk):
        yield np.asarray(array[rows[start:start + chunk]], dtype=np.float32)


def raw_pixels(prepared: str | Path, rows: np.ndarray, *, size: int = 8) -> dict[str, np.ndarray]:
    """Prepared frames area-averaged to size×size: rgb (N, size*size*3) in 0..255, thermal (N, size*size) °C,
    flattened in (row, col, channel) order like the grid features."""
    prepared, out = Path(prepared), {}
    for name in ("rgb", "thermal"):
        parts = []
        for frames in _frames(prepared, name, rows):
            x = torch.from_numpy(frames if frames.ndim == 4 else frames[..., None])
            x = F.adaptive_avg_pool2d(rearrange(x, "n h w c -> n c h w"), size)
            parts.append(rearrange(x, "n c h w -> n (h w c)").numpy())
        out[name] = np.concatenate(parts)
    return out


def region_cloud_fraction(prepared: str | Path, rows: np.ndarray, *, grid: int = 2,
                          positions: np.ndarray | None = None) -> np.ndarray:
    """(N, grid*grid) cloud fraction per region of the prepared thermal frame (row-major), by data.sky's rule
    (the rule of the index's `cloud_fraction`, here on the S×S prepared frame) at each capture's own row
    elevations (`positions`: a horizon-row frame looks 18° lower; None = every frame in the sky row)."""
    parts, start = [], 0
    for frames in _frames(Path(prepared), "thermal", rows):
        if positions is None:
            mask = cloud_mask(frames)
        else:
            centre = [centre_elevation(int(p)) for p in positions[start:start + len(frames)]]
            mask = np.stack([cloud_mask(f, centre_deg=c) for f, c in zip(frames, centre, strict=True)])
        start += len(frames)
        mask = torch.from_numpy(mask.astype(np.float32))[:, None]  # (n, 1, S, S)
        parts.append(rearrange(F.adaptive_avg_pool2d(mask, grid), "n 1 h w -> n (h w)").numpy())
    return np.concatenate(parts).astype(np.float64)
