"""What the report reads: run files of every stage, and the test-split forecasts decoded to real frames.

Every reader returns None (or an empty table) when its file is absent, so the report says "not available"
instead of failing; only the prepared index is required. Forecasts are decoded by nearest neighbour: the real
frame of the same preset and local day whose standardised embedding is closest to the forecast (the pool the
stage-2 retrieval metric ranks against), and its measured cloud_fraction stands for the forecast's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stage2_forecast import baselines, samples


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_index(prepared: Path) -> pd.DataFrame:
    if not (prepared / "index.parquet").is_file():
        raise FileNotFoundError(f"{prepared / 'index.parquet'} is missing: run `make data` (python -m data.prepare)")
    index = pd.read_parquet(prepared / "index.parquet")
    ts = pd.to_datetime(index["timestamp"], utc=True)
    index["solar_hour"] = (ts.dt.hour + ts.dt.minute / 60 + ts.dt.second / 3600 + index["lon"] / 15) % 24
    return index


def read_truth(prepared: Path, vsns) -> pd.DataFrame | None:
    """Synthetic data only: RAW/<VSN>/truth.parquet of every node (raw dir from PREPARED/report.json)."""
    raw = (read_json(prepared / "report.json") or {}).get("raw")
    files = [Path(raw) / vsn / "truth.parquet" for vsn in vsns] if raw else []
    if not files or not all(f.is_file() for f in files):
        return None
    truth = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    truth["timestamp"] = pd.to_datetime(truth["timestamp"], utc=True)
    return truth


def read_embeddings(stage1: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]] | None:
    """(keys table, {"rgb": (N, D), "thermal": (N, D)}) from RUN/embeddings.parquet; extra columns are ignored."""
    path = stage1 / "embeddings.parquet"
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=["vsn", "timestamp", "position", "split", "is_day", "emb_rgb",
                                           "emb_thermal"])
    emb = {b: np.stack(table.pop(f"emb_{b}").to_numpy()).astype(np.float32) for b in ("rgb", "thermal")}
    return table, emb


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@dataclass
class Forecasts:
    """Test-split forecasts of every method, decoded to real frames. N samples, H horizons, P presets."""

    table: samples.ScanTable
    win: samples.Windows
    horizons_min: tuple[float, ...]
    mask: np.ndarray  # (N, H, P) valid slots (daytime target, preset seen at t)
    nn_scan: dict[str, np.ndarray]  # method -> (N, H, P) scan of the nearest real frame, -1 where masked
    nn_dist: dict[str, np.ndarray]  # method -> (N, H, P) its Euclidean distance (standardised embedding)


def nearest_frames(pred: np.ndarray, table: samples.ScanTable, win: samples.Windows,
                   mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each valid slot, the same-day same-preset daytime scan nearest to the forecast, and the distance."""
    scan = np.full(mask.shape, -1, np.int64)
    dist = np.full(mask.shape, np.nan, np.float32)
    scans = np.arange(len(table.time_ns) - 1)
    day_t = table.day[win.tgt]  # (N, H)
    for p in range(mask.shape[2]):
        ok = table.present[scans, p] & table.is_day[scans, p]
        for day in np.unique(day_t[mask[:, :, p]]):
            cand = scans[ok & (table.day[scans] == day)]
            n, h = np.nonzero(mask[:, :, p] & (day_t == day))
            q, c = pred[n, h, p].astype(np.float64), table.z[cand, p].astype(np.float64)
            d2 = (q**2).sum(1)[:, None] + (c**2).sum(1)[None] - 2 * q @ c.T  # (M, C)
            best = d2.argmin(1)
            scan[n, h, p] = cand[best]
            dist[n, h, p] = np.sqrt(np.maximum(d2[np.arange(len(n)), best], 0.0))
    return scan, dist


@torch.no_grad()
def test_forecasts(stage1: Path, run_dirs: list[Path]) -> Forecasts | None:
    """Persistence and every stage-2 run's forecasts on the test split (None without embeddings or test data)."""
    from stage2_forecast.evaluate import predict
    from stage2_forecast.train import Config, load_run

    if not (stage1 / "embeddings.parquet").is_file():
        return None
    loaded = [load_run(r) for r in run_dirs]
    base = loaded[0][0] if loaded else Config(stage1_run=str(stage1))
    table = samples.load_scan_table(stage1, features=base.features, gap_s=base.scan_gap_s,
                                    prepared_dir=base.prepared)
    samples.standardise(table, day_only=base.day_only)
    kw = dict(horizons_min=base.horizons_min, step_min=base.step_min, tolerance_min=base.tolerance_min,
              day_only=base.day_only, day_anchors=base.day_anchors, split="test")
    win = samples.build_windows(table, context_scans=base.context_scans, **kw)
    if len(win) == 0:
        return None
    b = samples.gather(table, win, np.arange(len(win)), day_only=base.day_only)
    H = len(base.horizons_min)
    preds = {"persistence": np.repeat(b["ctx_z"][:, None, 0].numpy(), H, axis=1)}
    ridge = None
    if any(cfg.residual and cfg.residual_base == "ridge" for cfg, _, _ in loaded):  # the forecast those runs start from
        fit = {s: samples.build_windows(table, context_scans=base.context_scans, **{**kw, "split": s})
               for s in ("train", "val")}
        ridge = baselines.ridge(*(samples.gather(table, w, np.arange(len(w)), day_only=base.day_only)
                                  for w in fit.values()), b, context=False)[0]
    for run, (cfg, model, stats) in zip(run_dirs, loaded, strict=True):
        name = cfg.variant if cfg.variant not in preds else run.name
        preds[name] = predict(model, cfg, table, samples.build_windows(table, context_scans=cfg.context_scans, **kw),
                              stats["clim"], base=ridge)
    mask = b["tgt_mask"].numpy()
    decoded = {name: nearest_frames(pred, table, win, mask) for name, pred in preds.items()}
    return Forecasts(table=table, win=win, horizons_min=tuple(base.horizons_min), mask=mask,
                     nn_scan={k: v[0] for k, v in decoded.items()}, nn_dist={k: v[1] for k, v in decoded.items()})


def stage2_runs(stage2: Path) -> list[Path]:
    """Stage-2 run folders under STAGE2 (those with a ckpt.pt), in name order."""
    return sorted(p for p in stage2.iterdir() if (p / "ckpt.pt").is_file()) if stage2.is_dir() else []
