"""Export a trained model pair as the self-contained folder `edge_runtime` runs on a node (no torch there).

    sagecast-edge-export --stage1 runs/stage1 --stage2 runs/stage2/detr --out runs/edge

Writes OUT/encoder_<rgb|thermal>.onnx (normalised frames (N, C, S, S) → pooled features (N, D_x)),
OUT/forecaster.onnx (the standardised context (1, T, P, D) + clock → forecasts (1, H, P, D); the train diurnal
climatology and the linear residual start, damped anomaly or ridge, are baked in, so this file alone gives
the forecast), OUT/norm.json (frame and embedding standardisation), OUT/climatology.npy (P, 24, D), OUT/probe.json
(the stage-1 cloud-fraction probe) and, last, OUT/manifest.json: image size, crop, context, horizons, presets,
scan cadence, the node and location the model was trained for, the git commit and the sha256 of every file.

Export fails unless onnxruntime reproduces torch on real prepared frames and real context windows within
TOLERANCE (|onnx − torch| ≤ atol + rtol·|torch| everywhere); the largest errors are written to the manifest.
One difference from `sagecast-stage2-evaluate` is by design: the climatology at t + h is looked up at the
anchor's solar hour + h (a node does not know the target scan's time yet), not at the target scan's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from data.dataset import normalised_frames
from data.formats import SKY_PRESETS
from data.prepare.images import THERMAL_RANGE
from data.sage.registry import node_period
from sagecast_common.cli import UserError, make_parser, require, run_cli
from sagecast_common.encoders import load_encoders
from sagecast_common.runio import atomic_path, atomic_write_json, environment_info, file_sha256
from stage2_forecast import baselines, samples, train

FORMAT = "sagecast-edge/1"
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}
OPSET = 17
PARITY_ROWS = 32  # frames and windows compared; enough to cover every preset and several hours
FORECASTER_INPUTS = ("ctx_z", "ctx_mask", "ctx_dt", "solar_hour", "sun_elev")


class BakedForecaster(nn.Module):
    """A stage-2 model with its climatology lookup, context means and ridge start inside: the inputs a node can
    compute. The node holds the last `held_scans` scans (the manifest's context_scans); the model reads the
    first `context_scans` of them as scans, and each 30/60-min mean is the mean of the held scans less than
    that many minutes old (the parity check compares it with the scan table's means)."""

    def __init__(self, model: nn.Module, *, clim: np.ndarray, horizons_min, context_scans: int, means_min=(),
                 ridge: list | None = None, basis: torch.Tensor | None = None):
        super().__init__()
        self.model, self.T, self.means_min = model, context_scans, tuple(means_min)
        self.register_buffer("clim", torch.as_tensor(clim, dtype=torch.float32))  # (P, 24, D)
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32))
        # per horizon: change(x) = y_mean + (x − x_mean) @ w on samples.ridge_features rows, or None (persistence)
        self.ridge = ridge
        self.register_buffer("basis", basis)  # the ridge rows' projection (baselines.principal_basis), None: all D
        for h, terms in enumerate(ridge or []):
            for name, value in zip(("x_mean", "y_mean", "w"), terms or (), strict=False):
                self.register_buffer(f"ridge_{h}_{name}", torch.as_tensor(value, dtype=torch.float32))

    def forward(self, ctx_z, ctx_mask, ctx_dt, solar_hour, sun_elev):
        B, T, P, D = ctx_z.shape
        now_bin = solar_hour.long() % 24  # samples.hour_bin
        tgt_bin = (solar_hour[:, None] + self.horizons / 60.0).long() % 24  # (B, H)
        xs, ms = [ctx_z.transpose(1, 2)], [ctx_mask.transpose(1, 2)]  # (B, P, T, ...)
        for minutes in self.means_min:
            use = (ctx_mask & (ctx_dt > -minutes)[:, :, None]).float()  # (B, T, P)
            count = use.sum(1)
            xs.append(((ctx_z * use[..., None]).sum(1) / count.clamp(min=1)[..., None])[:, :, None])
            ms.append((count > 0)[:, :, None])
        mean_dt = -torch.tensor(self.means_min, dtype=ctx_dt.dtype).expand(B, len(self.means_min)) / 2
        xs[0], ms[0] = xs[0][:, :, :self.T], ms[0][:, :, :self.T]
        ctx_z, ctx_mask, ctx_dt = ctx_z[:, :self.T], ctx_mask[:, :self.T], ctx_dt[:, :self.T]
        batch = {"ctx_z": ctx_z, "ctx_mask": ctx_mask, "ctx_dt": ctx_dt, "solar_hour": solar_hour,
                 "sun_elev": sun_elev, "clim_now": self.clim[:, now_bin].transpose(0, 1),
                 "clim_tgt": self.clim[:, tgt_bin].permute(1, 2, 0, 3), "view_x": torch.cat(xs, 2)[:, None],
                 "view_mask": torch.cat(ms, 2)[:, None], "view_dt": torch.cat([ctx_dt, mean_dt], 1)}
        if self.ridge is not None:
            batch["base"] = self.ridge_base(batch)
        return self.model(batch)

    def ridge_base(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H, P, D) per-view ridge forecast, as baselines.view_ridge predicts it."""
        now, x = batch["ctx_z"][:, 0], samples.ridge_features(batch, self.basis)
        out = []
        for h, terms in enumerate(self.ridge):
            if terms is None:
                out.append(now)
                continue
            x_mean, y_mean, w = (getattr(self, f"ridge_{h}_{n}") for n in ("x_mean", "y_mean", "w"))
            out.append(now + y_mean + (x - x_mean) @ w)
        return torch.stack(out, dim=1)


def _to_onnx(module: nn.Module, args: tuple, path: Path, inputs, output: str, dynamic: dict) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript exporter: deprecated, but it exports these models in a third of the dynamo one's time;
        # it has no ONNX form for the fused inference kernel of nn.TransformerEncoderLayer, hence the fast path off
        warnings.simplefilter("ignore")
        torch.backends.mha.set_fastpath_enabled(False)
        torch.onnx.export(module, args, str(tmp), input_names=list(inputs), output_names=[output],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        torch.backends.mha.set_fastpath_enabled(True)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(name: str, got: np.ndarray, want: np.ndarray) -> dict:
    """{'max_abs', 'max_ratio'} with ratio = |got − want| / (atol + rtol·|want|); raises unless ratio ≤ 1."""
    err = np.abs(got.astype(np.float64) - want)
    ratio = float((err / (TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(want))).max())
    if not np.isfinite(ratio) or ratio > 1:
        raise UserError(f"onnxruntime does not reproduce torch for {name}: max |diff| {err.max():.3g} "
                        f"({ratio:.3g} × the tolerance {TOLERANCE}); nothing exported")
    return {"max_abs": float(err.max()), "max_ratio": ratio}


def held_scans(context_scans: int, means_min, step_min: float) -> int:
    """How many scans a node keeps: the model's context, or more when a context mean reaches further back (a
    mean over (t − W, t] needs ceil(W / step) scans)."""
    return max([context_scans] + [math.ceil(w / step_min - 1e-9) for w in means_min])


def _window_settings(cfg) -> dict:
    return dict(horizons_min=cfg.horizons_min, step_min=cfg.step_min, tolerance_min=cfg.tolerance_min,
                day_only=cfg.day_only, day_anchors=cfg.day_anchors)


def _parity_windows(wins: dict) -> tuple[str, samples.Windows]:
    split = next((s for s in ("test", "val", "train") if len(wins[s])), None)
    if split is None:
        raise UserError("no windows in any split to check the forecaster on")
    return split, wins[split]


def export(stage1: str | Path, stage2: str | Path, out: str | Path) -> Path:
    stage1, stage2, out = Path(stage1), Path(stage2), Path(out)
    enc_path = require(stage1 / "encoders.pt", made_by=f"sagecast-stage1-train run_dir={stage1}")
    probe_path = require(stage1 / "probe_cloud_fraction.json", made_by=f"sagecast-stage1-evaluate --run {stage1}")
    require(stage2 / "ckpt.pt", made_by=f"sagecast-stage2-train stage1_run={stage1} run_dir={stage2}")
    cfg, model, meta = train.load_run(stage2, best=True)
    if cfg.features == "grid" or cfg.finetune:
        raise UserError(f"{stage2}: features={cfg.features}, finetune={cfg.finetune}: only frozen pooled features "
                        "(features=rgb|thermal|both, finetune=false) can be exported")
    if cfg.motion is not None:
        raise UserError(f"{stage2}: trained with the cloud-motion input (motion={cfg.motion}); a node's runtime "
                        "has no motion source to feed it")
    emb_meta = json.loads((stage1 / "embeddings.json").read_text()) if (stage1 / "embeddings.json").exists() else {}
    if emb_meta.get("checkpoint_sha256") not in (None, file_sha256(enc_path)):
        raise UserError(f"{enc_path} is not the checkpoint {stage1}/embeddings.json was exported from: the "
                        f"stage-2 run {stage2} was trained on other embeddings")
    probe = json.loads(probe_path.read_text())
    mean, std, clim = meta["mean"], meta["std"], meta["clim"]
    if len(probe["coef"]) != mean.size:
        raise UserError(f"{probe_path} has {len(probe['coef'])} features, the forecaster {mean.size}: the probe "
                        "must read the same features (features=both)")

    cfg = dataclasses.replace(cfg, stage1_run=str(stage1))  # the embeddings and prepared dir it was trained on
    table, _, _, wins, _, _ = train.load_data(cfg)
    if table.n_rows > 1:
        raise UserError(f"{stage2}: trained with horizon-row views; a node's runtime holds sky-row scans only")
    step = cfg.step_min or samples.scan_step_min(table)
    held = held_scans(cfg.context_scans, cfg.context_means_min, step)
    ridge = basis = None
    if cfg.residual and cfg.residual_base == "ridge":
        ridge, _, basis = baselines.view_ridge_fits(table, wins, means_min=cfg.context_means_min,
                                                    day_only=cfg.day_only)
    baked = BakedForecaster(model, clim=clim, horizons_min=cfg.horizons_min, context_scans=cfg.context_scans,
                            means_min=cfg.context_means_min, ridge=ridge, basis=basis).eval()
    names = [c.split("_", 1)[1] for c in samples.FEATURES[cfg.features]]
    encoders, enc_meta = load_encoders(enc_path)
    prepared = Path(table.prepared_dir)
    report = json.loads((prepared / "report.json").read_text())
    size = int(np.load(prepared / "rgb.npy", mmap_mode="r").shape[1])

    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the folder is complete again only when it is rewritten
    split, win = _parity_windows(wins)
    idx = np.arange(min(PARITY_ROWS, len(win)))
    rows = table.rows[win.anchor[idx]]
    rows = rows[rows >= 0][:PARITY_ROWS]
    frames = dict(zip(("rgb", "thermal"), normalised_frames(prepared, rows), strict=True))
    parity, files = {}, {}
    with torch.no_grad():
        for name in names:
            module = encoders[name].eval()
            files[f"encoder_{name}.onnx"] = path = out / f"encoder_{name}.onnx"
            _to_onnx(module, (frames[name][:2],), path, ["x"], "features", {"x": {0: "n"}, "features": {0: "n"}})
            got = _session(path).run(None, {"x": frames[name].numpy()})[0]
            parity[f"encoder_{name}"] = check_parity(f"encoder_{name}", got, module(frames[name]).numpy())

        batch = samples.gather(table, win, idx, day_only=cfg.day_only, clim=clim, means_min=cfg.context_means_min)
        # the node's input: the `held` scans it keeps (the same anchors; only the context reaches further back)
        long = samples.build_windows(table, split=split, context_scans=held,
                                     **_window_settings(cfg))
        pos = np.searchsorted(long.anchor, win.anchor[idx])
        if not np.array_equal(long.anchor[pos], win.anchor[idx]):
            raise ValueError("the windows with the held context do not have the training windows' anchors")
        node = samples.gather(table, long, pos, day_only=cfg.day_only)
        args = tuple(node[k] for k in FORECASTER_INPUTS)
        files["forecaster.onnx"] = path = out / "forecaster.onnx"
        _to_onnx(baked, tuple(a[:1] for a in args), path, FORECASTER_INPUTS, "forecast",
                 {k: {0: "b"} for k in (*FORECASTER_INPUTS, "forecast")})
        # the reference: the model itself on the climatology at anchor + h, the table's context means and, for a
        # ridge start, the ridge as baselines.view_ridge computes it (an independent path for the baked fits)
        tgt_bin = samples.hour_bin(table.solar_hour[win.anchor[idx]][:, None] + np.asarray(cfg.horizons_min) / 60)
        batch["clim_tgt"] = torch.from_numpy(clim[np.arange(clim.shape[0]), tgt_bin[..., None]])
        if ridge is not None:
            sub = samples.Windows(win.anchor[idx], win.ctx[idx], win.tgt[idx], win.horizons_min)
            batch["base"] = torch.from_numpy(baselines.view_ridge(table, wins, table, sub, day_only=cfg.day_only,
                                                                  means_min=cfg.context_means_min)[0])
        want = model(batch).numpy()
        session = _session(path)
        # an input the model never reads (jepa: ctx_dt) is not in the graph
        used = {i.name for i in session.get_inputs()}
        feeds = {k: a.numpy() for k, a in zip(FORECASTER_INPUTS, args, strict=True) if k in used}
        got = np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in idx])
        parity["forecaster"] = check_parity("forecaster", got, want)

    norm = json.loads((prepared / "norm_stats.json").read_text())
    files["norm.json"] = out / "norm.json"
    atomic_write_json(out / "norm.json", {**norm, "emb_mean": mean.tolist(), "emb_std": std.tolist()})
    files["climatology.npy"] = out / "climatology.npy"
    with atomic_path(out / "climatology.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, clim.astype(np.float32))
    files["probe.json"] = out / "probe.json"
    shutil.copyfile(probe_path, out / "probe.json")

    # the node of the train split, where it stood at its latest scan (the place it runs at now): nodes move
    vsn = str(table.vsn[np.flatnonzero(table.split[:-1] == "train")[-1]])
    period = node_period(vsn, int(table.time_ns[:-1][table.vsn[:-1] == vsn].max()))
    manifest = {
        "format": FORMAT, "model": f"sagecast-{cfg.variant}", "variant": cfg.variant,
        "image_size": size, "crop": report.get("crop", "fov"), "thermal_range": list(THERMAL_RANGE),
        "presets": list(SKY_PRESETS), "features": names, "context_scans": held,
        "horizons_min": list(cfg.horizons_min), "step_min": step,
        "tolerance_min": cfg.tolerance_min if cfg.tolerance_min is not None else step / 2,
        "scan_gap_s": cfg.scan_gap_s, "residual_base": cfg.residual_base if cfg.residual else None,
        "node": vsn, "location": {"lat": period.lat, "lon": period.lon, "elevation_m": period.elevation_m,
                                  "tz": period.tz},
        "encoder_meta": {k: v for k, v in enc_meta.items() if k in ("img_size", "step", "total_steps")},
        "parity": {"tolerance": TOLERANCE, "split": split, "frames": int(len(rows)), "windows": int(len(idx)),
                   **parity},
        "git_commit": environment_info().get("git_commit"),
        "files": {name: file_sha256(path) for name, path in files.items()},
    }
    atomic_write_json(out / "manifest.json", manifest)
    print(f"wrote {out} ({', '.join(files)}); parity within {TOLERANCE}: "
          + ", ".join(f"{k} max |diff| {v['max_abs']:.2g}" for k, v in parity.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-edge-export", __doc__)
    ap.add_argument("--stage1", required=True, help="stage-1 run dir (encoders.pt, probe_cloud_fraction.json)")
    ap.add_argument("--stage2", required=True, help="stage-2 run dir (ckpt.pt), e.g. runs/stage2/detr")
    ap.add_argument("--out", required=True, help="model folder to write")
    args = ap.parse_args(argv)
    run_cli(lambda: export(args.stage1, args.stage2, args.out) and None, prog=ap.prog)


if __name__ == "__main__":
    main()
