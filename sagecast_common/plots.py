"""The one plotting helper of both stages and the report: matplotlib (Agg) with one style, figures written
atomically or returned as bytes for embedding, and the PCA map both stages draw.

    plt = pyplot()
    fig, ax = plt.subplots()
    ...
    save_figure(fig, run / "loss.png")      # temp name then rename; closes the figure
    png = figure_bytes(fig)                 # or: bytes for an HTML <img>; closes the figure
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

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


def save_figure(fig, path: str | Path, *, dpi: int = 110) -> None:
    """Write `fig` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))
    pyplot().close(fig)


def figure_bytes(fig, *, fmt: str = "png", dpi: int = 90) -> bytes:
    """`fig` as PNG or JPEG bytes (for embedding in HTML), then closed."""
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 82}} if fmt == "jpeg" else {}
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format=fmt, **extra)
    pyplot().close(fig)
    return buf.getvalue()


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) projection on the two leading principal components."""
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T
