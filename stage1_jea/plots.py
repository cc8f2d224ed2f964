"""Stage-1 plots, written (atomically, in the project style: sagecast_common.plots) next to the numbers they show."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagecast_common.plots import pca_2d, pyplot, save_figure


def plot_training(records: list[dict], run: Path) -> None:
    """`training_loss.png` from log.jsonl records: total loss | weighted inv, var, cov terms | learning rate."""
    if not records:
        return
    plt = pyplot()
    step = [r["step"] for r in records]
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    ax0.plot(step, [r["loss"] for r in records])
    ax0.set(title="VICReg loss", xlabel="step", ylabel="loss")
    _plot_terms(ax1, step, records)
    ax1.set(title="weighted terms", xlabel="step", yscale="log")
    ax2.plot(step, [r["lr"] for r in records], color="tab:gray")
    ax2.set(title="learning rate", xlabel="step", ylabel="lr")
    save_figure(fig, run / "training_loss.png")
    plot_variance_check(step, records, run)


def plot_variance_check(step: list[int], records: list[dict], run: Path) -> None:
    """`training_loss_two_panels.png`: the weighted terms on a linear scale | the variance term against its start
    (a falling variance term means the projector outputs spread out instead of contracting)."""
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    _plot_terms(ax0, step, records)
    ax0.set(title="weighted VICReg terms", xlabel="step", ylabel="term")
    var = [r["var"] for r in records]
    ax1.plot(step, var, color="tab:orange")
    ax1.axhline(var[0], color="tab:gray", linestyle="--", label=f"first logged: {var[0]:.2f}")
    ax1.set(title=f"variance term: {var[0]:.2f} at step {step[0]} → {var[-1]:.2f} at step {step[-1]}",
            xlabel="step", ylabel="25 × mean hinge (max 25)")
    ax1.legend()
    save_figure(fig, run / "training_loss_two_panels.png")


def _plot_terms(ax, step: list[int], records: list[dict]) -> None:
    for key in ("inv", "var", "cov"):
        ax.plot(step, [r[key] for r in records], label=key)
    ax.legend()


def plot_embeddings_2d(emb: dict[str, np.ndarray], cloud_fraction: np.ndarray, hour: np.ndarray,
                       path: Path) -> None:
    """One row per branch: PCA map coloured by cloud fraction, and by local solar hour."""
    plt = pyplot()
    # constrained layout gives each colour bar its own room, so its labels never run into the next panel
    fig, axes = plt.subplots(len(emb), 2, figsize=(11, 4.2 * len(emb)), squeeze=False, layout="constrained")
    for row, (name, x) in zip(axes, emb.items(), strict=True):
        xy = pca_2d(x)
        for ax, values, label, cmap in ((row[0], cloud_fraction, "cloud fraction", "viridis"),
                                        (row[1], hour, "local solar hour", "twilight")):
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=4, cmap=cmap)
            fig.colorbar(sc, ax=ax, label=label, pad=0.02)
            ax.set(title=f"{name} embeddings, PCA", xlabel="PC1", ylabel="PC2")
    save_figure(fig, path)
