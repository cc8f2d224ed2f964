"""Headroom captured: the share of the gap between the strongest same-input baseline and the view-limited oracle
that a forecaster closes, in one unit — cloud-fraction MAE against the generator's true cloud fraction.

    headroom = (MAE_baseline − MAE_model) / (MAE_baseline − MAE_oracle)

0 = no better than the baseline, 1 = as good as an oracle that knows the true wind and every pixel the chosen
views saw at t, t−5 and t−10 min (data.synthetic.oracle `oracle_view_cf_{h}`). Embedding forecasts become
cloud fractions through a ridge probe fitted on TRAIN targets to the true cloud fraction (`fit_truth_probe`);
baselines that forecast embeddings go through the same probe, so the comparison is in one unit.

The strongest baseline is picked per horizon by its point MAE on the scored samples (this favours the baseline
slightly, never the model). Intervals: paired 95 % bootstrap over whole test days (and the model's seeds),
`sagecast_common.bootstrap`; every method is scored on the same slots (finite truth, oracle and forecasts).
Real data has no oracle: `headroom_block` is then not called and the report says why (stage2_forecast.evaluate).

    probe = fit_truth_probe(z_train, cf_train, z_val, cf_val)
    block = headroom_block({"detr": [cf_seed0, cf_seed1]}, {"ridge": cf_ridge, ...}, cf_oracle, cf_truth, mask,
                           day_idx, n_days, ["5", "15"], n_boot=1000)
"""

from __future__ import annotations

import numpy as np

from sagecast_common.bootstrap import day_sums, interval, replicate_totals
from sagecast_common.linalg import ridge_on_val


def fit_truth_probe(z_train: np.ndarray, cf_train: np.ndarray, z_val: np.ndarray, cf_val: np.ndarray) -> dict:
    """Ridge (alpha picked on val) from embeddings (M, D) to the true cloud fraction (M,); finite rows only."""
    ok_t, ok_v = np.isfinite(cf_train), np.isfinite(cf_val)
    if ok_t.sum() < 2 or ok_v.sum() < 1:
        raise ValueError("too few train/val targets with a true cloud fraction to fit the probe")
    alpha, (xm, ym, coef) = ridge_on_val(z_train[ok_t], cf_train[ok_t], z_val[ok_v], cf_val[ok_v])
    return {"alpha": float(alpha), "x_mean": xm, "coef": coef, "intercept": float(ym - xm @ coef)}


def apply_probe(probe: dict, z: np.ndarray) -> np.ndarray:
    """(..., D) embeddings → (...) cloud fraction, clipped to [0, 1] (a fraction cannot leave it)."""
    return np.clip(z @ probe["coef"] + probe["intercept"], 0.0, 1.0)


def preset_mean(now: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The 8-preset mean as an embedding forecast: every sky view's vector at t + h is the mean of the sky views
    present at t. now (N, P, D) at t, present (N, P) → (N, 1, P, D), the same for every horizon and view.

    A baseline of the headroom block (read through the same probe as the others): a network sees every view, and
    at 5 minutes a view's own sky has mostly moved on, so the mean of the ring often tells its future better than
    the view itself (stage2_forecast.ceilings)."""
    w = present[..., None].astype(now.dtype)
    mean = (now * w).sum(1, keepdims=True) / np.maximum(w.sum(1, keepdims=True), 1.0)
    return np.broadcast_to(mean, now.shape)[:, None]


def headroom_block(models: dict[str, list[np.ndarray]], baselines: dict[str, np.ndarray], oracle: np.ndarray,
                   truth: np.ndarray, mask: np.ndarray, day_idx: np.ndarray, n_days: int, hkeys: list[str], *,
                   n_boot: int = 1000) -> dict:
    """Per model and horizon: headroom captured with its interval, the baseline it is measured against and the
    three MAEs. Arrays are (N, H, P) cloud fractions; models may have several seeds (their errors averaged)."""
    ok = mask & np.isfinite(truth) & np.isfinite(oracle)
    for p in [*baselines.values(), *(m for members in models.values() for m in members)]:
        ok &= np.isfinite(p)
    sums = {"#n": day_sums(np.ones_like(truth), ok, day_idx, n_days)[None],
            "oracle": day_sums(np.abs(np.nan_to_num(oracle - truth)), ok, day_idx, n_days)[None]}
    for name, p in baselines.items():
        sums[f"b:{name}"] = day_sums(np.abs(np.nan_to_num(p - truth)), ok, day_idx, n_days)[None]
    for name, members in models.items():
        sums[f"m:{name}"] = np.stack([day_sums(np.abs(np.nan_to_num(p - truth)), ok, day_idx, n_days)
                                      for p in members])
    point, reps = replicate_totals(sums, n_boot=n_boot)
    n, n_reps = np.maximum(point["#n"], 1), np.maximum(reps["#n"], 1)
    out = {"unit": "cloud-fraction MAE against the generator's true cloud fraction", "n_days": n_days,
           "interval": f"95 % over {n_days} test days resampled (and the model's seeds)", "models": {}}
    for name in models:
        per = {}
        for h, hk in enumerate(hkeys):
            if point["#n"][h] == 0:
                per[hk] = {"headroom": None, "why": "no slot with truth, oracle and every forecast"}
                continue
            best = min(baselines, key=lambda b: point[f"b:{b}"][h])
            mae_b, mae_o, mae_m = (point[k][h] / n[h] for k in (f"b:{best}", "oracle", f"m:{name}"))
            row = {"baseline": best, "mae_baseline": float(mae_b), "mae_oracle": float(mae_o),
                   "mae_model": float(mae_m), "n": int(point["#n"][h]),
                   "mae_baselines": {b: float(point[f"b:{b}"][h] / n[h]) for b in baselines}}
            if mae_b - mae_o <= 0:
                row.update(headroom=None, why="the oracle is no better than the baseline: no headroom to capture")
            else:
                gap = (reps[f"b:{best}"][:, h] - reps["oracle"][:, h]) / n_reps[:, h]
                gain = (reps[f"b:{best}"][:, h] - reps[f"m:{name}"][:, h]) / n_reps[:, h]
                share = np.where(gap > 0, gain / np.where(gap > 0, gap, 1.0), np.nan)
                row.update(headroom=float((mae_b - mae_m) / (mae_b - mae_o)), headroom_ci=interval(share).tolist())
            per[hk] = row
        out["models"][name] = per
    return out
