"""The one plotting helper: matplotlib (Agg) with one style, figures written atomically.

    plt = pyplot()
    fig, ax = plt.subplots()
    ...
    save_figure(fig, run / "loss.png")      # temp name then rename; closes the figure
"""

from __future__ import annotations

from pathlib import Path

from sagecast_common.runio import atomic_path

STYLE = {"figure.dpi": 110, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
         "legend.frameon": False}


def pyplot():
    """matplotlib.pyplot on the Agg backend with the project's style (imported lazily: plotting is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def save_figure(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format=path.suffix.lstrip("."))
    pyplot().close(fig)
