"""Stage-2 plots next to the numbers they show: training loss / lr (per run) and skill vs horizon.

Written through sagecast_common.plots (atomic, the project style).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sagecast_common.plots import pyplot, save_figure

# Methods with nothing learned by gradient descent are drawn dashed, so they never pass for a model.
BASELINE_PREFIXES = ("persistence", "smart", "climatology", "ridge", "damped", "anomaly", "oracle", "linear")


def is_baseline(name: str) -> bool:
    return name.lower().replace(" ", "_").startswith(BASELINE_PREFIXES)


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
    save_figure(fig, run_dir / "loss.png", dpi=100)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set(xlabel="step", ylabel="learning rate")
    save_figure(fig, run_dir / "lr.png", dpi=100)


def skill_figure(report: dict):
    """Skill vs persistence (1 - MSE/MSE_persistence) against horizon, one line per method.

    Trained models solid, baselines dashed; ticks at the scored horizons; error bars are the 95 % intervals
    (`skill_ci`) where the scores (OUT/scores.json) have them.
    """
    plt = pyplot()
    horizons = [float(h) for h in report["horizons_min"]]
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    with_ci = False
    for name, per_h in report["variants"].items():
        rows = [per_h.get(f"{h:g}", {}) for h in horizons]
        y = np.array([r.get("skill_vs_persistence", np.nan) for r in rows], dtype=float)
        ci = [r.get("skill_ci") for r in rows]
        style = dict(ls="--", marker="s", ms=4, lw=1.2) if is_baseline(name) else dict(ls="-", marker="o", lw=2)
        (line,) = ax.plot(horizons, y, label=name, **style)
        if all(c is not None for c in ci):
            # drawn lo..hi, not as ± errors: a percentile interval need not contain the point estimate
            lo, hi = np.array(ci, dtype=float).T
            ax.vlines(horizons, lo, hi, color=line.get_color(), lw=style["lw"], alpha=0.7)
            with_ci = True
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(horizons, [f"{h:g}" for h in horizons])
    title = f"test split, n={report.get('n_test', '?')}" + (", bars: 95 % intervals" if with_ci else "")
    ax.set(xlabel="horizon (min)", ylabel="skill vs persistence (MSE)", title=title)
    ax.legend(fontsize=8, ncols=2)
    return fig


def plot_skill(report: dict, path: str | Path) -> None:
    save_figure(skill_figure(report), path, dpi=100)
