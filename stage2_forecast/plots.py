"""Stage-2 plots next to the numbers they show: training loss / lr (per run) and skill vs horizon.

Written through sagecast_common.plots (atomic, the project style).
"""

from __future__ import annotations

from pathlib import Path

from sagecast_common.plots import pyplot, save_figure


def plot_training(records: list[dict], run_dir: str | Path) -> None:
    """RUN/loss.png (train loss per log step; val MSE of model and persistence per epoch) and RUN/lr.png."""
    plt = pyplot()
    run_dir = Path(run_dir)
    train = [r for r in records if "lr" in r]
    val = [r for r in records if "val_mse" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_mse"] for r in val], "o-", label="val MSE")
        ax.plot([r["step"] for r in val], [r["val_mse_persistence"] for r in val], "k--", label="val MSE persistence")
    ax.set(xlabel="step", ylabel="loss (standardised targets)", yscale="log")
    ax.legend()
    save_figure(fig, run_dir / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set(xlabel="step", ylabel="learning rate")
    save_figure(fig, run_dir / "lr.png")


def plot_skill(report: dict, path: str | Path) -> None:
    """Skill vs persistence (1 - MSE/MSE_persistence) against horizon, one line per method."""
    plt = pyplot()
    horizons = report["horizons_min"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per_h in report["variants"].items():
        ax.plot(horizons, [per_h[f"{h:g}"]["skill_vs_persistence"] for h in horizons], "o-", label=name)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xlabel="horizon (min)", ylabel="skill vs persistence (MSE)", title=f"test split, n={report['n_test']}")
    ax.legend()
    save_figure(fig, path)
