"""Plot helpers shared by both stages and the report: a headless pyplot, atomic saves, PNG bytes, PCA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sagecast_common.runio import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported late so nothing happens at import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
