"""Stage-2 baselines, all in the forecasters' space (standardised stage-1 embeddings) and slots.

Each works on batches from `samples.gather(..., clim=clim)`: fitted on the train (and val) batches of the
training data, applied to any evaluation batch — the test split or a held-out folder.

- persistence: z(t+h) = z(t).
- smart persistence: persist the anomaly from the train diurnal climatology, clim(t+h) + z(t) − clim(t) (the
  reference in solar forecasting).
- damped anomaly: clim(t+h) + a_h·(z(t) − clim(t)), a_h per dimension in closed form (least squares on train);
  the learned variants start from exactly this forecast. The fit is cross-fitted by day: the anomalies of
  each train day are taken from the climatology of the *other* train days. An in-sample climatology already
  contains the day's own weather, so its anomalies look short-lived and a_h comes out far too small; on a
  new day (whose weather the climatology has never seen) that over-damped forecast lost badly to
  persistence (quick default, 3 train days: skill −0.9 at 5 min with the in-sample fit).
- climatology: clim(t+h), the train mean by preset and solar hour.
- ridge (last scan) and ridge_context (all T scans × P presets): closed-form ridge to the change z(t+h) − z(t)
  of all presets, penalty chosen per horizon on val.

    clim = fit_climatology(table)
    b_train = samples.gather(table, wins["train"], np.arange(len(wins["train"])), clim=clim)
    preds = forecasts(b_train, b_val, b_eval)          # name → (N, H, P, D)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sagecast_common.linalg import RidgePath, ridge_leave_group_out
from stage2_forecast import samples
from stage2_forecast.models import damped_anomaly

RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_climatology(table: samples.ScanTable, *, day_only: bool = True, exclude_day: int | None = None) -> np.ndarray:
    """(P, 24, D) train-split mean standardised embedding by preset and solar-hour bin (else the preset mean);
    `exclude_day` leaves that day's captures out (the cross-fitted damping)."""
    P, D = table.z.shape[1:]
    use = table.present & (table.split == "train")[:, None] & (table.is_day if day_only else True)
    if exclude_day is not None:
        use &= (table.day != exclude_day)[:, None]
    if not use.any():
        raise ValueError("no train-split captures to fit the climatology on")
    hour = samples.hour_bin(table.solar_hour)
    clim = np.zeros((P, 24, D), np.float32)
    for p in range(P):
        clim[p] = table.z[use[:, p], p].mean(0) if use[:, p].any() else table.z[use].mean(0)
        for hr in np.unique(hour[use[:, p]]):
            clim[p, hr] = table.z[use[:, p] & (hour == hr), p].mean(0)
    return clim


def _anomalies(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = z(t) − clim(t) as (N, 1, P, D), y = z(t+h) − clim(t+h) (N, H, P, D), valid-slot mask (N, H, P)."""
    x = (batch["ctx_z"][:, 0] - batch["clim_now"]).double().numpy()[:, None]
    y = (batch["tgt_z"] - batch["clim_tgt"]).double().numpy()
    mask = (batch["tgt_mask"] & batch["ctx_mask"][:, None, 0]).numpy()
    return x, y, mask


def _damping_sums(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    x, y, mask = _anomalies(batch)
    m = mask[..., None]
    return (x * y * m).sum((0, 2)), (x * x * m).sum((0, 2))


def fit_damping(batch: dict) -> np.ndarray:
    """(H, D) least-squares a_h per dimension: argmin Σ (y − a·x)² over valid slots = Σxy / Σx², with the
    batch's own climatology (see fit_damping_by_day for the fit the forecasters use)."""
    sxy, sxx = _damping_sums(batch)
    return (sxy / np.maximum(sxx, 1e-12)).astype(np.float32)


def fit_damping_by_day(table: samples.ScanTable, win: samples.Windows, *, day_only: bool = True) -> np.ndarray:
    """(H, D) a_h = Σxy / Σx² over the train windows, each day's anomalies taken from the climatology of the
    other train days (leave one day out). With a single train day there is nothing to leave out: in-sample."""
    days = table.day[win.anchor]
    if len(np.unique(days)) < 2:
        return fit_damping(samples.gather(table, win, np.arange(len(win)), day_only=day_only,
                                          clim=fit_climatology(table, day_only=day_only)))
    sxy = sxx = 0.0
    for day in np.unique(days):
        clim = fit_climatology(table, day_only=day_only, exclude_day=int(day))
        xy, xx = _damping_sums(samples.gather(table, win, np.flatnonzero(days == day), day_only=day_only,
                                              clim=clim))
        sxy, sxx = sxy + xy, sxx + xx
    return (sxy / np.maximum(sxx, 1e-12)).astype(np.float32)


def _persist(batch: dict) -> np.ndarray:
    H = batch["tgt_z"].shape[1]
    return np.repeat(batch["ctx_z"][:, None, 0].numpy(), H, axis=1)


def damped_forecast(batch: dict, damping: np.ndarray) -> np.ndarray:
    """clim(t+h) + a_h·(z(t) − clim(t)) on a batch with clim (numpy): damping 1 = smart persistence, 0 =
    climatology."""
    return damped_anomaly(batch["ctx_z"][:, 0], batch["ctx_mask"][:, 0], batch["clim_now"], batch["clim_tgt"],
                          torch.as_tensor(damping)).numpy()


def ridge(b_train: dict, b_val: dict, b_eval: dict, *, context: bool,
          alphas=RIDGE_ALPHAS) -> tuple[np.ndarray, dict[int, float]]:
    """Ridge (sagecast_common.linalg.RidgePath: one eigendecomposition per horizon) from the last scan or the
    whole context to the change of every preset; fitted on train samples whose anchor and target scans are
    complete, penalty (relative to the mean squared feature norm) chosen per horizon on val. Returns (N, H, P, D)
    and alphas."""
    def design(b):
        z = b["ctx_z"] if context else b["ctx_z"][:, :1]
        # float32 design (T·P·D columns can be tens of thousands); the small N × N algebra runs in float64
        return z.flatten(1).numpy(), b["ctx_z"][:, 0].double().numpy(), b["tgt_z"].double().numpy()

    (xtr, ztr, ytr), (xva, zva, yva), (xev, zev, _) = design(b_train), design(b_val), design(b_eval)
    mtr, mva = b_train["tgt_mask"].numpy(), b_val["tgt_mask"].numpy()
    full = b_train["ctx_mask"][:, 0].all(1).numpy()
    H = ytr.shape[1]
    pred, chosen = np.repeat(zev[:, None], H, axis=1), {}
    for h in range(H):
        r = full & mtr[:, h].all(1)
        if r.sum() < 2:
            chosen[h] = None  # too few complete samples: the forecast stays persistence
            continue
        path = RidgePath(xtr[r], (ytr[r, h] - ztr[r]).reshape(r.sum(), -1))

        def fit(x, a, path=path):
            return [p.reshape(len(x), *ztr.shape[1:]) for p in path.predict_path(x, a)]

        errors = [(((zva + f - yva[:, h]) ** 2).mean(-1) * mva[:, h]).sum() for f in fit(xva, alphas)]
        best = alphas[int(np.argmin(errors))] if mva[:, h].any() else alphas[2]
        pred[:, h] = zev + fit(xev, [best])[0]
        chosen[h] = best
    return pred.astype(np.float32), chosen


def ridge_start(table: samples.ScanTable, wins: dict[str, samples.Windows], *,
                day_only: bool = True) -> tuple[dict[str, np.ndarray], dict[int, float | None]]:
    """The forecast the learned variants start from with residual_base=ridge: {"train", "val"} → (N, H, P, D).

    val: exactly the "ridge" baseline (fitted on all train windows, penalty per horizon chosen on val), which is
    also what evaluation adds to a variant's output on any other windows. train: cross-fitted by day with those
    penalties, each day's forecast from a ridge fitted on the other train days (as the damping is): an
    in-sample ridge with more columns (P·D) than rows nearly interpolates its own targets, which would teach
    the network that the start needs no correction. One day alone is fitted in-sample.
    """
    b_train, b_val = (samples.gather(table, wins[s], np.arange(len(wins[s])), day_only=day_only)
                      for s in ("train", "val"))
    val, alphas = ridge(b_train, b_val, b_val, context=False)
    x = b_train["ctx_z"][:, 0].flatten(1).double().numpy()
    z, y = b_train["ctx_z"][:, 0].numpy(), b_train["tgt_z"].double().numpy()
    days = table.day[wins["train"].anchor]
    full = b_train["ctx_mask"][:, 0].all(1).numpy()
    train, gram = np.repeat(z[:, None], y.shape[1], axis=1), x @ x.T
    for h, alpha in alphas.items():
        if alpha is None:
            continue  # too few complete samples: the start stays persistence, as in `ridge`
        change = (y[:, h] - z).reshape(len(z), -1)
        fit = full & b_train["tgt_mask"][:, h].all(1).numpy()
        if len(np.unique(days)) > 1:
            train[:, h] += ridge_leave_group_out(gram, change, days, fit, alpha).reshape(z.shape)
        else:
            train[:, h] += RidgePath(x[fit], change[fit]).predict(x, alpha).reshape(z.shape)
    return {"train": train.astype(np.float32), "val": val}, alphas


def forecasts(b_train: dict, b_val: dict, b_eval: dict,
              damping: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Every embedding baseline on the evaluation batch; also returns the damping (fitted on b_train unless
    given, e.g. by fit_damping_by_day) and the ridge penalties."""
    damping = fit_damping(b_train) if damping is None else damping
    preds = {"persistence": _persist(b_eval),
             "smart_persistence": damped_forecast(b_eval, np.ones_like(damping)),
             "damped_anomaly": damped_forecast(b_eval, damping),
             "climatology": damped_forecast(b_eval, np.zeros_like(damping))}
    preds["ridge"], alpha = ridge(b_train, b_val, b_eval, context=False)
    preds["ridge_context"], alpha_ctx = ridge(b_train, b_val, b_eval, context=True)
    return preds, {"damping": damping, "ridge_alpha": alpha, "ridge_context_alpha": alpha_ctx}


def cloud_fraction(table: samples.ScanTable, win: samples.Windows) -> dict[str, np.ndarray]:
    """Scalar cloud-fraction baselines (N, H, P): per-preset persistence and the anchor scan's 8-preset mean."""
    H = win.tgt.shape[1]
    now = table.cloud[win.anchor]  # (N, P), NaN where missing
    mean = np.nanmean(np.where(table.present[win.anchor], now, np.nan), axis=1, keepdims=True)
    return {"cf_persistence": np.repeat(now[:, None], H, axis=1),
            "cf_preset_mean": np.repeat(np.broadcast_to(mean, now.shape)[:, None], H, axis=1)}


def oracle_cloud_fraction(table: samples.ScanTable, win: samples.Windows, raw_dir: str | Path | None,
                          horizons_min) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """data.synthetic's cloud-fraction oracles as ceilings: ({name: (N, H, P)}, truth at the targets, status).

    Reads RAW/<VSN>/truth.parquet: oracle_{advect,cover}_cf_{h} (the oracle's forecast made at the anchor
    capture, keyed by vsn/timestamp/position) and `cloud_fraction`, the generator's true cloud fraction (both
    layers, cirrus included). The oracles forecast that truth, not the thermal camera's measured cloud fraction
    (which misses thin cirrus), so they are scored against it: the second value is the truth at each target
    capture, and `cf_truth_persistence` (the truth at the anchor) is their persistence in the same units.
    Absent files or columns give no oracle, None and the reason.
    """
    if raw_dir is None:
        return {}, None, "no raw dir given (oracles exist only for data.synthetic output)"
    index = pd.read_parquet(Path(table.prepared_dir) / "index.parquet",
                            columns=["vsn", "timestamp", "position", "row"])
    names = ["cloud_fraction"] + [f"oracle_{kind}_cf_{h:g}" for kind in ("advect", "cover") for h in horizons_min]
    files = [Path(raw_dir) / vsn / "truth.parquet" for vsn in index["vsn"].unique()]
    truths = [pd.read_parquet(f) for f in files if f.exists()]
    if not truths:
        return {}, None, f"no {raw_dir}/<VSN>/truth.parquet (not data.synthetic output)"
    truth = pd.concat(truths)
    have = [c for c in names[1:] if c in truth.columns]
    if not have or "cloud_fraction" not in truth.columns:
        return {}, None, (f"truth.parquet in {raw_dir} has no cloud_fraction or oracle_*_cf_<h> columns for horizons "
                          f"{list(horizons_min)}")
    truth["timestamp"] = pd.to_datetime(truth["timestamp"], utc=True).astype(index["timestamp"].dtype)
    joined = index.merge(truth[["vsn", "timestamp", "position", "cloud_fraction", *have]], how="left")
    by_row = np.full((int(index["row"].max()) + 2, len(names)), np.nan)
    by_row[joined["row"].to_numpy()] = joined.reindex(columns=names).to_numpy(float)
    rows = table.rows[win.anchor]  # (N, P), -1 = missing → the all-NaN last row
    target = by_row[table.rows[win.tgt], 0]  # (N, H, P)
    out = {"cf_truth_persistence": np.broadcast_to(by_row[rows, 0][:, None, :], target.shape)}
    for kind in ("advect", "cover"):
        cols = [names.index(f"oracle_{kind}_cf_{h:g}") for h in horizons_min]
        if any(names[c] in have for c in cols):
            out[f"cf_oracle_{kind}"] = np.stack([by_row[rows, c] for c in cols], axis=1)
    return out, target, f"oracles from {raw_dir}: {', '.join(have)}, scored against its cloud_fraction"
