"""Stage-2 speed on CPU: training samples/s per variant, the window builder, and test-split evaluation time.

    python -m benchmarks.run_all --only stage2

Data: the stage-2 test fake (3 days × 10 h of 5-min scans, 8 presets, 16-px images, tiny ViT encoders).
Baselines measured in the same run: a per-sample Python loop building the same windows, and the evaluation of
persistence alone (the cheapest possible report) against the full report. The last rows time two evaluation
kernels at `make compare` sizes on random data against the obvious way of computing the same numbers.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sagecast_common.bootstrap import replicate_totals
from sagecast_common.linalg import RidgePath
from stage2_forecast import baselines, evaluate, samples
from stage2_forecast.loss import forecast_loss
from stage2_forecast.train import Config, build_model


def windows_loop(table: samples.ScanTable, horizons_min, context_scans: int, step: float) -> int:
    """Reference: the obvious per-anchor loop over scans (same rules as `build_windows`); returns #samples."""
    tol, t, n = step / 2, table.time_ns[:-1] / 60e9, 0
    for a in range(len(t)):
        same = np.flatnonzero((table.vsn[:-1] == table.vsn[a]) & (table.day[:-1] == table.day[a]))
        ctx = [next((j for j in same if j <= a and abs(t[j] - (t[a] - k * step)) <= tol), -1)
               for k in range(context_scans)]
        tgt = [next((j for j in same if j > a and abs(t[j] - (t[a] + h)) <= tol), -1) for h in horizons_min]
        n += bool(ctx) and any(g >= 0 and (table.present[g] & table.is_day[g]).any() for g in tgt)
    return n


def _time(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def _retrieval_broadcast(e: np.ndarray, cand: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The obvious way (what metrics.retrieval_ranks did before): an (M, C, D) difference array."""
    d = ((e[:, None] - cand[None]) ** 2).sum(-1)
    return (d < ((e - true) ** 2).sum(-1)[:, None] - 1e-9).sum(1)


def _retrieval_matmul(e: np.ndarray, cand: np.ndarray, true: np.ndarray) -> np.ndarray:
    """metrics.retrieval_ranks' kernel: squared distances from one matrix product, in float64."""
    e, cand = e.astype(np.float64), cand.astype(np.float64)
    e2, c2 = (e * e).sum(1)[:, None], (cand * cand).sum(1)[None]
    d = e2 - 2.0 * e @ cand.T + c2
    return (d < ((e - true) ** 2).sum(-1)[:, None] - 1e-9 * (1.0 + e2 + c2)).sum(1)


def compare_sized_rows() -> list[str]:
    """Evaluation kernels at `make compare` sizes (pooled features D = 1,024, 8 presets), random data."""
    rng = np.random.default_rng(0)
    e, cand = rng.normal(size=(680, 1024)).astype(np.float32), rng.normal(size=(170, 1024)).astype(np.float32)
    true = cand[rng.integers(0, 170, 680)]
    t_old, t_new = _time(lambda: _retrieval_broadcast(e, cand, true), 3), _time(lambda: _retrieval_matmul(e, cand,
                                                                                                          true), 3)
    assert np.array_equal(_retrieval_broadcast(e, cand, true), _retrieval_matmul(e, cand, true))
    x, y = rng.normal(size=(1200, 4096)).astype(np.float32), rng.normal(size=(1200, 4096))
    path, x_val = RidgePath(x, y), rng.normal(size=(600, 4096)).astype(np.float32)
    alphas = baselines.RIDGE_ALPHAS
    t_each = _time(lambda: [path.predict(x_val, a) for a in alphas])
    t_path = _time(lambda: path.predict_path(x_val, alphas))
    return [f"| retrieval ranks, one preset-day (680 forecasts × 170 candidates × 1,024 dims) | {t_new * 1e3:.0f} ms "
            f"(one float64 matrix product) | {t_old * 1e3:.0f} ms ((M, C, D) difference array) | "
            f"{t_old / t_new:.0f}× faster |",
            f"| ridge val errors for {len(alphas)} penalties (1,200 × 4,096 train, 600 val, 4,096 outputs) | "
            f"{t_path * 1e3:.0f} ms (one projection, `predict_path`) | {t_each * 1e3:.0f} ms (`predict` per penalty) "
            f"| {t_each / t_path:.1f}× faster |"]


def advection_rows(tmp: Path, stage1: Path, mean, std, damping, clim, horizons) -> list[str]:
    """detr train steps with the cloud motion, with the advection path (the default) against without
    (advect=false), on one table with a random motion vector per scan (tests.test_stage2_motion.motion_rows)."""
    from tests.test_stage2_motion import motion_rows

    path = tmp / "motion.parquet"
    motion_rows(days=("2023-06-01", "2023-06-02", "2023-06-03"), scans=120).to_parquet(path)
    table = samples.load_scan_table(stage1)
    samples.join_motion(table, samples.read_motion(path))
    samples.standardise(table, mean=mean, std=std)
    win = samples.build_windows(table, horizons_min=horizons, context_scans=3, split="train")
    rate = {}
    for advect in (True, False):
        torch.manual_seed(0)
        cfg = Config(stage1_run=str(stage1), width=96, dropout=0.0, residual_base="damped", motion=str(path),
                     advect=advect)
        model = build_model(cfg, mean, std, damping).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            b = samples.gather(table, win, np.random.default_rng(0).choice(len(win), 32), clim=clim)
            loss, _ = forecast_loss(model(b), b["tgt_z"], b["tgt_mask"])
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        rate[advect] = 32 / _time(step, 6)
    return [f"| train step, detr with the cloud motion and the advection path (batch 32) | {rate[True]:.0f} "
            f"samples/s | {rate[False]:.0f} samples/s (motion as token features only, `advect=false`) | "
            f"{rate[True] / rate[False]:.2f}× |"]


def run() -> str:
    from tests.fixtures_stage2 import make_fake_stage1

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = make_fake_stage1(Path(tmp), hours=10)
        table = samples.load_scan_table(stage1)
        mean, std = samples.standardise(table)
        horizons = (5.0, 15.0, 30.0, 60.0)
        t_vec = _time(lambda: samples.build_windows(table, horizons_min=horizons, context_scans=3), 5)
        t_loop = _time(lambda: windows_loop(table, horizons, 3, 5.0))
        win = samples.build_windows(table, horizons_min=horizons, context_scans=3, split="train")
        clim = baselines.fit_climatology(table)
        damping = baselines.fit_damping(samples.gather(table, win, np.arange(len(win)), clim=clim))
        rows = []
        for variant in ("detr", "jepa"):
            cfg = Config(variant=variant, stage1_run=str(stage1), width=96, jepa_width=64, dropout=0.0,
                         residual_base="damped")
            model = build_model(cfg, mean, std, damping).train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            bs = 32

            def step(model=model, opt=opt, variant=variant, bs=bs):
                idx = np.random.default_rng(0).choice(len(win), bs)
                b = samples.gather(table, win, idx, clim=clim, images=variant == "jepa")
                loss, _ = forecast_loss(model(b), b["tgt_z"], b["tgt_mask"])
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()
            rows.append((variant, bs / _time(step, 6), cfg,
                         model.eval()))
        advection = advection_rows(Path(tmp), stage1, mean, std, damping, clim, horizons)
        wins = {s: samples.build_windows(table, horizons_min=horizons, context_scans=3, split=s)
                for s in ("train", "val", "test")}
        test = wins["test"]

        def persistence_only():
            b = samples.gather(table, test, np.arange(len(test)))
            pred = np.repeat(b["ctx_z"][:, None, 0].numpy(), len(horizons), axis=1)
            ranks = evaluate.retrieval_ranks(pred, table, test, b["tgt_mask"].numpy())
            evaluate.score(pred, b["tgt_z"].numpy(), b["tgt_mask"].numpy(), ranks, None, None)

        def model_eval(cfg, model):
            b = samples.gather(table, test, np.arange(len(test)))
            pred = evaluate.predict(model, cfg, table, test, clim)
            ranks = evaluate.retrieval_ranks(pred, table, test, b["tgt_mask"].numpy())
            evaluate.score(pred, b["tgt_z"].numpy(), b["tgt_mask"].numpy(), ranks, None, None)

        t_persist = _time(persistence_only)
        t_ridge = _time(lambda: baselines.view_ridge(table, wins, table, test))
        sums = {k: np.random.default_rng(0).gamma(2.0, 1.0, (3, 20, 4)) for k in ("a", "b", "c")}
        t_boot = _time(lambda: replicate_totals(sums, n_boot=1000))
        t_models = {variant: _time(lambda c=cfg, m=model: model_eval(c, m)) for variant, _, cfg, model in rows}
    lines = ["### Stage 2 (forecasters, CPU, 1 thread)", "", "`python -m benchmarks.run_all --only stage2`", "",
             "| what | measured | baseline (same run) | ratio |", "|---|---|---|---|",
             f"| window builder, {len(table.time_ns) - 1} scans | {t_vec * 1e3:.1f} ms (vectorised) | "
             f"{t_loop * 1e3:.0f} ms (per-sample loop) | {t_loop / t_vec:.0f}× faster |"]
    for variant, sps, _, _ in rows:
        lines.append(f"| train step, {variant} (batch 32) | {sps:.0f} samples/s | {rows[0][1]:.0f} samples/s "
                     f"(detr) | {sps / rows[0][1]:.2f}× |")
    for name, t in [*t_models.items(), ("per-view ridge (fit on train, alpha on val, applied to test)", t_ridge)]:
        lines.append(f"| test-split eval ({len(test)} samples), {name} | {t * 1e3:.0f} ms | {t_persist * 1e3:.0f} ms "
                     f"(persistence) | {t / t_persist:.1f}× |")
    lines += advection
    lines.append(f"| paired bootstrap, 3 methods × 3 seeds × 20 days × 4 horizons, 1000 replicates | "
                 f"{t_boot * 1e3:.0f} ms | – | – |")
    lines += compare_sized_rows()
    return "\n".join(lines)
