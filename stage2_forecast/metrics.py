"""Stage-2 metrics on (sample, horizon, preset) slots: MSE, cosine, retrieval rank, RankMe, cloud-fraction MAE
with day-bootstrap intervals, and per-day skills. Used by stage2_forecast.evaluate."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sagecast_common.bootstrap import day_sums, interval, replicate_totals
from stage2_forecast import samples


def retrieval_ranks(pred, table: samples.ScanTable, win: samples.Windows, mask, *, day_only=True) -> np.ndarray:
    """(N, H, P) number of same-day same-preset candidates strictly closer to the forecast than the truth."""
    ranks = np.full(mask.shape, -1, np.int64)
    scans = np.arange(len(table.time_ns) - 1)  # every real scan (not the masked sentinel)
    for p in range(mask.shape[2]):
        ok = table.present[scans, p] & (table.is_day[scans, p] if day_only else True)
        for day in np.unique(table.day[win.tgt][mask[:, :, p]]):
            cand = table.z[scans[ok & (table.day[scans] == day)], p].astype(np.float64)  # (C, D)
            n, h = np.nonzero(mask[:, :, p] & (table.day[win.tgt] == day))
            e = pred[n, h, p].astype(np.float64)  # (M, D)
            e2, c2 = (e * e).sum(1)[:, None], (cand * cand).sum(1)[None]
            d = e2 - 2.0 * e @ cand.T + c2  # (M, C) squared distances, one matrix product instead of (M, C, D)
            d_true = ((e - table.z[win.tgt[n, h], p]) ** 2).sum(-1)
            ranks[n, h, p] = (d < d_true[:, None] - 1e-9 * (1.0 + e2 + c2)).sum(1)  # rounding of the expansion
    return ranks


def score(pred, true, mask, ranks, cf_pred, cf_true) -> dict[int, dict[str, float]]:
    """Per-horizon metrics over valid slots; pred/true (N, H, P, D), mask/ranks/cf_* (N, H, P)."""
    out = {}
    for h in range(mask.shape[1]):
        m = mask[:, h]
        e, t = pred[:, h][m], true[:, h][m]
        cos = (e * t).sum(-1) / (np.linalg.norm(e, axis=-1) * np.linalg.norm(t, axis=-1) + 1e-12)
        out[h] = {"n": int(m.sum()), "mse": float(((e - t) ** 2).mean()), "cosine": float(cos.mean()),
                  "top1": float((ranks[:, h][m] < 1).mean()), "top5": float((ranks[:, h][m] < 5).mean()),
                  "cloud_fraction_mae": float(np.abs(cf_pred[:, h] - cf_true[:, h])[m].mean())
                  if cf_pred is not None else None}
    return out


def with_skill(metrics: dict, reference: dict) -> dict:
    for h, m in metrics.items():
        ref = reference[h]
        m["skill_vs_persistence"] = 1.0 - m["mse"] / ref["mse"] if ref["mse"] > 0 else float("nan")
        if m["cloud_fraction_mae"] is not None and ref["cloud_fraction_mae"]:
            m["cloud_fraction_skill_vs_persistence"] = 1.0 - m["cloud_fraction_mae"] / ref["cloud_fraction_mae"]
    return metrics


def cf_block(cf, cf_true, mask, day_idx, n_days, hkeys, n_boot) -> dict:
    """Cloud-fraction MAE per method (probe on the forecast, scalar baselines, oracles) with day-bootstrap CIs."""
    sums = {}
    for name, members in cf.items():
        ok = [mask & np.isfinite(cf_true) & np.isfinite(p) for p in members]
        sums[name] = np.stack([day_sums(np.abs(np.nan_to_num(p - cf_true)), o, day_idx, n_days)
                               for p, o in zip(members, ok, strict=True)])
        sums[f"{name}#n"] = np.stack([day_sums(np.ones_like(cf_true), o, day_idx, n_days) for o in ok])
    point, reps = replicate_totals(sums, n_boot=n_boot)
    return {name: {hk: {"mae": float(point[name][h] / point[f"{name}#n"][h]),
                        "mae_ci": interval(reps[name][:, h] / reps[f"{name}#n"][:, h]).tolist(),
                        "n": int(point[f"{name}#n"][h])} for h, hk in enumerate(hkeys)} for name in cf}


def per_day(sq, mask, day_idx, day_ords, day_cloud, types, hkeys) -> list[dict]:
    """One row per evaluation day: its type, mean cloud fraction, samples and every method's skill."""
    sums = {k: np.mean([day_sums(e, mask, day_idx, len(day_ords)) for e in v], axis=0) for k, v in sq.items()}
    return [{"day": str(pd.Timestamp.fromordinal(int(d)).date()), "type": str(types[i]),
             "mean_cloud_fraction": float(day_cloud[i]), "n_samples": int((day_idx == i).sum()),
             "skill": {k: {hk: float(1 - s[i, h] / sums["persistence"][i, h]) if sums["persistence"][i, h] > 0
                           else None for h, hk in enumerate(hkeys)} for k, s in sums.items()}}
            for i, d in enumerate(day_ords)]
