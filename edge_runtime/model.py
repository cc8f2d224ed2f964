"""An exported model folder (sagecast-edge-export) checked and loaded for onnxruntime.

    model = EdgeModel("runs/edge")          # refuses a folder whose files do not match manifest.json's sha256
    z = model.encode(rgb, thermal)          # normalised frames (N, 3, S, S), (N, 1, S, S) → (N, D) standardised
    f = model.forecast(ctx_z, ctx_mask, ctx_dt, solar_hour, sun_elev)   # (H, P, D) standardised
    cf = model.cloud(z)                     # the stage-1 probe's cloud fraction, clipped to [0, 1]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

FORMAT = "sagecast-edge/1"


class ModelError(Exception):
    """A model folder that must not be run (missing, altered, other format)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_folder(folder: Path) -> dict:
    """manifest.json, after checking every file it lists against its sha256."""
    path = folder / "manifest.json"
    if not path.exists():
        raise ModelError(f"{path} not found: export a model with `sagecast-edge-export --out {folder}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{path}: format {manifest.get('format')!r}, this runtime reads {FORMAT!r}")
    for name, digest in manifest["files"].items():
        if not (folder / name).exists():
            raise ModelError(f"{folder / name} is missing (listed in {path})")
        if sha256(folder / name) != digest:
            raise ModelError(f"{folder / name} does not match its sha256 in {path}: refusing an altered model")
    return manifest


class EdgeModel:
    def __init__(self, folder: str | Path, *, threads: int = 1):
        self.folder = Path(folder)
        self.manifest = m = check_folder(self.folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        session = lambda name: ort.InferenceSession(str(self.folder / name), opts, providers=["CPUExecutionProvider"])
        self.encoders = {name: session(f"encoder_{name}.onnx") for name in m["features"]}
        self.forecaster = session("forecaster.onnx")
        self.inputs = {i.name for i in self.forecaster.get_inputs()}  # jepa reads no ctx_dt: not in its graph
        norm = json.loads((self.folder / "norm.json").read_text())
        self.norm = norm
        self.mean, self.std = np.asarray(norm["emb_mean"], np.float32), np.asarray(norm["emb_std"], np.float32)
        probe = json.loads((self.folder / "probe.json").read_text())
        self.probe = {k: np.asarray(probe[k], np.float64) for k in ("feature_mean", "feature_std", "coef")}
        self.probe["intercept"] = float(probe["intercept"])
        self.version = m["files"]["forecaster.onnx"][:12]
        self.presets, self.horizons = list(m["presets"]), list(m["horizons_min"])

    def encode(self, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        frames = {"rgb": rgb, "thermal": thermal}
        feats = [self.encoders[name].run(None, {"x": frames[name]})[0] for name in self.manifest["features"]]
        return ((np.concatenate(feats, axis=-1) - self.mean) / self.std).astype(np.float32)

    def forecast(self, ctx_z, ctx_mask, ctx_dt, solar_hour: float, sun_elev: float) -> np.ndarray:
        """ctx_z (T, P, D), ctx_mask (T, P), ctx_dt (T,) minutes → (H, P, D)."""
        feeds = {"ctx_z": ctx_z[None].astype(np.float32), "ctx_mask": ctx_mask[None].astype(bool),
                 "ctx_dt": ctx_dt[None].astype(np.float32), "solar_hour": np.array([solar_hour], np.float32),
                 "sun_elev": np.array([sun_elev], np.float32)}
        return self.forecaster.run(None, {k: v for k, v in feeds.items() if k in self.inputs})[0][0]

    def cloud(self, z: np.ndarray) -> np.ndarray:
        """Standardised embeddings (..., D) → cloud fraction (...), as stage2_forecast.evaluate applies the probe."""
        raw = z.astype(np.float64) * self.std + self.mean
        p = self.probe
        return np.clip(((raw - p["feature_mean"]) / p["feature_std"]) @ p["coef"] + p["intercept"], 0.0, 1.0)
