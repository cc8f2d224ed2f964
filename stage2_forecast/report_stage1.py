"""Stage-1 figures of the HTML report: PCA of trained vs random-init features, cross-modal retrieval examples.

Random-init features come from encoders of the same architectures (specs in RUN/encoders.pt), seeded, run on
a fixed subsample of daytime frames, so the figure costs seconds. Retrieval examples use the same space as
`stage1_jea.evaluate`: the trained projectors from RUN/ckpt.pt, cosine similarity, test-split daytime pairs.
The report is the one reader of every stage, so it rebuilds the projector with stage 1's own `projector`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data.dataset import normalised_frames
from sagecast_common.encoders import build_encoder
from sagecast_common.plots import pca_2d, pyplot
from stage2_forecast.report_figures import thermal_rgb

PCA_ROWS = 600  # daytime frames in the PCA figure (evenly spaced over the table: fixed, no RNG)
RETRIEVAL_EXAMPLES = 3


def even_subsample(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int)) if n else np.zeros(0, int)


@torch.no_grad()
def random_init_features(stage1: Path, prepared: Path, rows: np.ndarray, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Backbone features of randomly initialised encoders (same specs as the run) for prepared `rows`."""
    payload = torch.load(stage1 / "encoders.pt", map_location="cpu", weights_only=True)
    torch.manual_seed(seed)
    encoders = {b: build_encoder(e["arch"], in_chans=e["in_chans"], kwargs=e.get("kwargs")).eval()
                for b, e in payload["encoders"].items()}
    out: dict[str, list[np.ndarray]] = {"rgb": [], "thermal": []}
    for start in range(0, len(rows), 128):
        rgb, thermal = normalised_frames(prepared, rows[start:start + 128])
        out["rgb"].append(encoders["rgb"](rgb).numpy())
        out["thermal"].append(encoders["thermal"](thermal).numpy())
    return {b: np.concatenate(v) for b, v in out.items()}


def pca_figure(trained: dict[str, np.ndarray], random: dict[str, np.ndarray] | None, solar_hour: np.ndarray):
    """Rows: branches; columns: trained | random init; colour: local solar hour."""
    plt = pyplot()
    columns = [("trained", trained)] + ([("random init", random)] if random is not None else [])
    fig, axes = plt.subplots(2, len(columns), figsize=(5.2 * len(columns), 8), squeeze=False, layout="constrained")
    for j, (label, feats) in enumerate(columns):
        for i, branch in enumerate(("rgb", "thermal")):
            xy = pca_2d(feats[branch])
            sc = axes[i, j].scatter(xy[:, 0], xy[:, 1], c=solar_hour, s=5, cmap="twilight", vmin=0, vmax=24)
            axes[i, j].set(title=f"{branch} backbone, {label}", xlabel="PC1", ylabel="PC2")
    fig.colorbar(sc, ax=axes, label="local solar hour", shrink=0.6)
    return fig


@torch.no_grad()
def project(stage1: Path, emb: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Trained projector outputs of backbone features, or None when RUN/ckpt.pt or config.json is absent."""
    from stage1_jea.model import projector

    ckpt, config = stage1 / "ckpt.pt", stage1 / "config.json"
    if not (ckpt.is_file() and config.is_file()):
        return None
    dims = json.loads(config.read_text())["projector"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    out = {}
    for b, x in emb.items():
        head = projector(x.shape[1], dims)
        head.load_state_dict({k.removeprefix(f"proj_{b}."): v for k, v in state.items() if k.startswith(f"proj_{b}.")})
        out[b] = head.eval()(torch.from_numpy(x)).numpy()
    return out


def retrieval_figure(z: dict[str, np.ndarray], rows: pd.DataFrame, rgb: np.ndarray, thermal: np.ndarray):
    """RETRIEVAL_EXAMPLES RGB queries (evenly spaced over the test pool): the true thermal pair and the top 3."""
    unit = {b: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for b, v in z.items()}
    sim = unit["rgb"] @ unit["thermal"].T  # (Q, K) query row i's true key is row i
    queries = even_subsample(len(rows), RETRIEVAL_EXAMPLES + 2)[1:-1]
    lo, hi = np.nanpercentile(thermal[rows["row"].to_numpy()].astype(np.float32), [2, 98])
    plt = pyplot()
    fig, axes = plt.subplots(len(queries), 5, figsize=(11, 2.5 * len(queries)), squeeze=False, layout="constrained")
    for ax_row, q in zip(axes, queries, strict=True):
        top = np.argsort(-sim[q], kind="stable")[:3]
        rank = int((sim[q] > sim[q, q]).sum())
        r = rows["row"].to_numpy()
        found = "yes" if q in top else f"no (rank {rank + 1})"
        ax_row[0].imshow(rgb[r[q]])
        ax_row[0].set_title(f"RGB query, preset {rows['position'].iloc[q]}\ntrue pair in top 3: {found}", fontsize=8)
        ax_row[1].imshow(thermal_rgb(thermal[r[q]], lo, hi))
        ax_row[1].set_title(f"its thermal (true pair)\ncos {sim[q, q]:.2f}", fontsize=8)
        for k, (ax, key) in enumerate(zip(ax_row[2:], top, strict=True)):
            ax.imshow(thermal_rgb(thermal[r[key]], lo, hi))
            mark = " = true pair" if key == q else ""
            ax.set_title(f"match {k + 1}{mark}\ncos {sim[q, key]:.2f}", fontsize=8)
        for ax in ax_row:
            ax.set_axis_off()
    return fig
