"""Stage-1 plots, written (atomically, in the project style: sagecast_common.plots) next to the numbers they show."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagecast_common.plots import pyplot, save_figure


def plot_training(records: list[dict], run: Path) -> None:
    """`training_loss_two_panels.png` (total | inv, var, cov) and `learning_rate.png` from log.jsonl records."""
    if not records:
        return
    plt = pyplot()
    step = [r["step"] for r in records]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    ax0.plot(step, [r["loss"] for r in records])
    ax0.set(title="VICReg loss", xlabel="step", ylabel="loss")
    for key in ("inv", "var", "cov"):
        ax1.plot(step, [r[key] for r in records], label=key)
    ax1.set(title="weighted terms", xlabel="step", yscale="log")
    ax1.legend()
    save_figure(fig, run / "training_loss_two_panels.png")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(step, [r["lr"] for r in records])
    ax.set(title="learning rate", xlabel="step", ylabel="lr")
    save_figure(fig, run / "learning_rate.png")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) projection on the two leading principal components."""
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def plot_embeddings_2d(emb: dict[str, np.ndarray], cloud_fraction: np.ndarray, hour: np.ndarray,
                       path: Path) -> None:
    """One row per branch: PCA map coloured by cloud fraction, and by local hour."""
    plt = pyplot()
    fig, axes = plt.subplots(len(emb), 2, figsize=(10, 4.2 * len(emb)), squeeze=False)
    for row, (name, x) in zip(axes, emb.items(), strict=True):
        xy = pca_2d(x)
        for ax, values, label, cmap in ((row[0], cloud_fraction, "cloud fraction", "viridis"),
                                        (row[1], hour, "hour (UTC)", "twilight")):
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=4, cmap=cmap)
            fig.colorbar(sc, ax=ax, label=label)
            ax.set(title=f"{name} embeddings, PCA", xlabel="PC1", ylabel="PC2")
    save_figure(fig, path)
