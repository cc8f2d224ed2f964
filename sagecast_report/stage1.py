"""Stage-1 figures of the HTML report: PCA of trained vs random-init features, cross-modal retrieval examples.

Both draw files `stage1_jea.evaluate` writes: RUN/features_pca.parquet (the principal components, computed
there from the backbone features) and RUN/retrieval_examples.json (queries and matches in the trained
projector space); the frames shown come from the prepared arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sagecast_common.plots import pyplot
from sagecast_report.figures import thermal_rgb

COLUMNS = {"trained": "trained", "random_init": "random init"}


def pca_figure(pca: pd.DataFrame):
    """Rows: branches; columns: trained | random init (those present); colour: local solar hour."""
    plt = pyplot()
    columns = [(name, label) for name, label in COLUMNS.items() if (pca["features"] == name).any()]
    fig, axes = plt.subplots(2, len(columns), figsize=(5.2 * len(columns), 8), squeeze=False, layout="constrained")
    for j, (name, label) in enumerate(columns):
        for i, branch in enumerate(("rgb", "thermal")):
            xy = pca[(pca["features"] == name) & (pca["branch"] == branch)]
            sc = axes[i, j].scatter(xy["pc1"], xy["pc2"], c=xy["solar_hour"], s=5, cmap="twilight", vmin=0, vmax=24)
            axes[i, j].set(title=f"{branch} backbone, {label}", xlabel="PC1", ylabel="PC2")
    fig.colorbar(sc, ax=axes, label="local solar hour", shrink=0.6)
    return fig


def retrieval_figure(examples: list[dict], rgb: np.ndarray, thermal: np.ndarray):
    """Per example: the RGB query, its true thermal pair and the top 3 thermal matches, with their cosines."""
    rows = [e["query"]["row"] for e in examples] + [m["row"] for e in examples for m in e["matches"]]
    lo, hi = np.nanpercentile(thermal[np.asarray(rows)].astype(np.float32), [2, 98])
    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 5, figsize=(11, 2.5 * len(examples)), squeeze=False,
                             layout="constrained")
    for ax_row, e in zip(axes, examples, strict=True):
        q = e["query"]
        found = "yes" if any(m["true_pair"] for m in e["matches"]) else f"no (rank {e['rank']})"
        ax_row[0].imshow(rgb[q["row"]])
        ax_row[0].set_title(f"RGB query, preset {q['position']}\ntrue pair in top 3: {found}", fontsize=8)
        ax_row[1].imshow(thermal_rgb(thermal[q["row"]], lo, hi))
        ax_row[1].set_title(f"its thermal (true pair)\ncos {e['true_cos']:.2f}", fontsize=8)
        for k, (ax, m) in enumerate(zip(ax_row[2:], e["matches"], strict=False)):
            ax.imshow(thermal_rgb(thermal[m["row"]], lo, hi))
            mark = " = true pair" if m["true_pair"] else ""
            ax.set_title(f"match {k + 1}{mark}\ncos {m['cos']:.2f}", fontsize=8)
        for ax in ax_row:
            ax.set_axis_off()
    return fig
