"""The PNGs the report embeds: colour-bar label and spacing, lr as a loss panel, skill-plot styling."""

from __future__ import annotations

import numpy as np
import pytest

from stage1_jea import plots as stage1_plots
from stage2_forecast.plots import is_baseline, skill_figure


@pytest.fixture
def captured(monkeypatch):
    """Figures the stage-1 plot functions would save, kept open for inspection."""
    figures = []
    monkeypatch.setattr(stage1_plots, "save_figure", lambda fig, path: figures.append((fig, path)))
    return figures


def test_embedding_colour_bar_says_local_solar_hour_and_clears_the_next_panel(captured, tmp_path):
    rng = np.random.default_rng(0)
    emb = {"rgb": rng.normal(size=(50, 6)), "thermal": rng.normal(size=(50, 4))}
    stage1_plots.plot_embeddings_2d(emb, rng.uniform(size=50), rng.uniform(0, 24, 50), tmp_path / "e.png")
    (fig, _), = captured
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert sorted(ax.get_ylabel() for ax in bars) == ["cloud fraction", "cloud fraction", "local solar hour",
                                                      "local solar hour"]
    first_bar = bars[0].get_tightbbox(renderer)  # row 0: bar of the cloud-fraction panel, right neighbour next
    right = panels[1].get_tightbbox(renderer)
    assert first_bar.x1 < right.x0, "the colour bar's labels run into the next panel"


def test_stage1_loss_figures_have_the_learning_rate_and_the_variance_term_against_its_start(captured, tmp_path):
    records = [{"step": s, "loss": 30 - s, "inv": 1.0, "var": 20.0 - s, "cov": 0.5, "lr": 0.1 * s}
               for s in range(5)]
    stage1_plots.plot_training(records, tmp_path)
    (fig, path), (fig2, path2) = captured
    assert path.name == "training_loss.png"
    assert [ax.get_title() for ax in fig.axes] == ["VICReg loss", "weighted terms", "learning rate"]
    assert fig.axes[2].lines[0].get_ydata().tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert path2.name == "training_loss_two_panels.png" and len(fig2.axes) == 2
    var_ax = fig2.axes[1]
    assert var_ax.get_title() == "variance term: 20.00 at step 0 → 16.00 at step 4"
    assert list(var_ax.lines[0].get_ydata()) == [20.0, 19.0, 18.0, 17.0, 16.0]
    assert list(var_ax.lines[1].get_ydata()) == [20.0, 20.0]  # the dashed start level


def test_skill_plot_dashes_baselines_ticks_horizons_and_draws_intervals():
    per = lambda s, ci: {"skill_vs_persistence": s, **({"skill_ci": ci} if ci else {})}  # noqa: E731
    report = {"horizons_min": [5, 15, 60], "n_test": 10, "variants": {
        "persistence": {h: per(0.0, None) for h in ("5", "15", "60")},
        "detr": {"5": per(0.1, [0.0, 0.2]), "15": per(0.2, [0.1, 0.3]), "60": per(0.3, [0.25, 0.5])}}}
    fig = skill_figure(report)
    ax = fig.axes[0]
    assert ax.get_xticks().tolist() == [5, 15, 60]
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines if not line.get_label().startswith("_")}
    assert styles == {"persistence": "--", "detr": "-"}
    intervals = [c for c in ax.collections if c.get_label().startswith("_")]  # vlines lo..hi, one per horizon
    (detr_bars,) = [c for c in intervals if len(c.get_segments()) == 3]
    assert [tuple(s[:, 1]) for s in detr_bars.get_segments()] == [pytest.approx((0.0, 0.2)), pytest.approx((0.1, 0.3)),
                                                                  pytest.approx((0.25, 0.5))]
    assert is_baseline("smart_persistence") and is_baseline("ridge_context") and not is_baseline("jepa")
