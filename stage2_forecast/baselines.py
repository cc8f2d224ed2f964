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
- ridge: the per-view ridge (`view_ridge`) on the same view context the networks see (last T scans, 30/60-min
  means, ring neighbours, horizon row, clock, and the cloud motion when the table has it; each slot on the
  train embeddings' top RIDGE_RANK principal directions), one coefficient set shared by all views, to the
  change z(t+h) − z(t); penalty chosen per horizon on val. (The whole-context ridge over T·P·D columns is gone:
  on grids it needed ~19 GB.)

    clim = fit_climatology(table)
    b_train = samples.gather(table, wins["train"], np.arange(len(wins["train"])), clim=clim)
    preds = forecasts(b_train, b_eval)                 # name → (N, H, P, D)
    preds["ridge"], alphas = view_ridge(table, wins, table, wins["test"])
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sagecast_common.runio import atomic_path
from stage2_forecast import samples
from stage2_forecast.models import damped_anomaly

RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CROSS_FIT_FOLDS = 5
RIDGE_RANK = 256  # principal directions per slot in the per-view ridge (samples.ridge_features: memory, time)
# Bump when the per-view ridge's arithmetic changes: it is part of every ridge cache key (stage2_forecast.train).
RIDGE_CACHE_VERSION = 2


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


class _Normal:
    """Sufficient statistics of a centred ridge (the model and penalty scale of sagecast_common.linalg.RidgePath),
    accumulated over row chunks so the pooled design (N·P rows) never exists at once."""

    def __init__(self):
        self.n, self.sx, self.sy, self.sxx, self.sxy = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray, y: np.ndarray, sign: float = 1.0) -> None:
        """Add a chunk of rows; its products in float32 (half the time of float64 on the compare's F = 2,563
        design; a chunk is ≤ 2,048 rows), the running sums in float64."""
        x, y = x.astype(np.float32), y.astype(np.float32)
        self.n += sign * len(x)
        self.sx = self.sx + sign * x.sum(0, dtype=np.float64)
        self.sy = self.sy + sign * y.sum(0, dtype=np.float64)
        self.sxx = self.sxx + sign * (x.T @ x).astype(np.float64)
        self.sxy = self.sxy + sign * (x.T @ y).astype(np.float64)

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        xm, ym = self.sx / self.n, self.sy / self.n
        cxx, cxy = self.sxx - self.n * np.outer(xm, xm), self.sxy - self.n * np.outer(xm, ym)
        return xm, ym, cxx, cxy, max(float(np.trace(cxx)) / self.n, 1e-12)

    def solve_path(self, alphas) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(x_mean, y_mean, w) per alpha with change ≈ (x − x_mean) @ w + y_mean, from one eigendecomposition."""
        xm, ym, cxx, cxy, scale = self.centred()
        lam, u = np.linalg.eigh(cxx)
        uty = u.T @ cxy
        return [(xm, ym, u @ (uty / (lam + a * scale)[:, None])) for a in alphas]

    def solve(self, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xm, ym, cxx, cxy, scale = self.centred()
        return xm, ym, np.linalg.solve(cxx + alpha * scale * np.eye(len(cxx)), cxy)


def principal_basis(table: samples.ScanTable, rank: int = RIDGE_RANK, *, day_only: bool = True) -> torch.Tensor | None:
    """(D, rank) top principal directions of the train split's sky-row standardised embeddings (None when
    rank >= D: the ridge then sees every dimension)."""
    D = table.z.shape[-1]
    if rank >= D:
        return None
    use = table.present & (table.split == "train")[:, None] & (table.is_day if day_only else True)
    x = table.z[use].astype(np.float64)
    _, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    return torch.from_numpy(vectors[:, ::-1][:, :rank].astype(np.float32).copy())


class _Rows:
    """The per-view ridge's rows of `win`, gathered once for every horizon (the view context and the design do
    not depend on h): chunks of (sample idx, design (B, P, F) float32, targets (B, H, P, D), now (B, P, D),
    valid (B, H, P)); a row is a (sample, sky view) whose view is present at t and whose target at h is valid."""

    def __init__(self, table, win, basis, *, means_min, day_only: bool, chunk: int = 256):
        self.n, self.shape, self.chunks = len(win), table.z.shape[1:], []
        for start in range(0, len(win), chunk):
            idx = np.arange(start, min(start + chunk, len(win)))
            b = samples.gather(table, win, idx, day_only=day_only, means_min=means_min)
            now = b["view_x"][:, 0, :, 0]
            valid = (b["tgt_mask"] & b["view_mask"][:, 0, :, 0][:, None]).numpy()  # (B, H, P)
            self.chunks.append((idx, samples.ridge_features(b, basis).numpy(), b["tgt_z"].numpy(), now.numpy(),
                                valid))

    def at(self, h: int, keep: np.ndarray | None = None):
        """(idx, design, change z(t+h) − z(t), now, valid) per chunk, only the samples where `keep` (N,) is true."""
        for idx, x, tgt, now, valid in self.chunks:
            sel = slice(None) if keep is None else keep[idx]
            yield idx[sel], x[sel], tgt[sel, h] - now[sel], now[sel], valid[sel, h]


def _fit(rows: _Rows, *, h, keep=None, sign=1.0, normal=None) -> _Normal:
    """The statistics of the valid rows at horizon h (of the kept samples), added (sign=-1: taken) to `normal`
    or a new one."""
    normal = normal or _Normal()
    for _, x, y, _, valid in rows.at(h, keep):
        normal.add(x[valid], y[valid], sign)
    return normal


def _predict(rows: _Rows, fits, *, h, keep=None) -> list[np.ndarray]:
    """now + (x − x_mean) @ w + y_mean for each fit: (N, P, D) each, every slot (masked ones are not scored;
    samples not kept stay 0). In float32: the fits are solved in float64, their products need not be."""
    out = [np.zeros((rows.n, *rows.shape), np.float32) for _ in fits]
    fits32 = [tuple(a.astype(np.float32) for a in fit) for fit in fits]
    for idx, x, _, now, _ in rows.at(h, keep):
        for o, (xm, ym, w) in zip(out, fits32, strict=True):
            o[idx] = now + ym + (x - xm) @ w
    return out


def view_ridge_fits(table: samples.ScanTable, wins: dict[str, samples.Windows], *, means_min=(30.0, 60.0),
                    day_only: bool = True, alphas=RIDGE_ALPHAS, rank: int = RIDGE_RANK,
                    cache: Path | None = None, train_rows: _Rows | None = None) -> tuple[list, dict, object]:
    """The per-view ridge's fits per horizon, (x_mean, y_mean, w) with change ≈ (x − x_mean) @ w + y_mean on
    `samples.ridge_features` rows (None: fewer than 2 train rows, the forecast stays persistence), the penalty
    chosen per horizon on wins["val"] (1e-1 without val targets), and the projection basis of the rows.

    `cache`: a folder keyed by the settings the fits depend on (`ridge_cache_key`); the fits of these windows are
    read from cache/fits-<windows_key>.npz when there, written there otherwise. Every stage-2 run and evaluation
    of a comparison fits this same ridge; on `make compare`'s 40 training days one fit is minutes.
    `train_rows`: wins["train"]'s `_Rows` on this basis, when the caller has them already."""
    name = f"fits-{windows_key(wins)}"
    cached = _load(cache, name)
    if cached is not None:
        return _fits_from_arrays(cached)
    kw = dict(means_min=means_min, day_only=day_only)
    basis = principal_basis(table, rank, day_only=day_only)
    train_rows = train_rows or _Rows(table, wins["train"], basis, **kw)
    val_rows = _Rows(table, wins["val"], basis, **kw)
    val = samples.gather(table, wins["val"], np.arange(len(wins["val"])), day_only=day_only, means_min=None)
    fits, chosen = [], {}
    for h in range(len(wins["train"].horizons_min)):
        normal = _fit(train_rows, h=h)
        if normal.n < 2:
            fits.append(None)
            chosen[h] = None
            continue
        path = normal.solve_path(alphas)
        m, true = val["tgt_mask"][:, h].numpy(), val["tgt_z"][:, h].numpy()
        errors = [(((f - true) ** 2).mean(-1) * m).sum()
                  for f in _predict(val_rows, path, h=h)]
        best = int(np.argmin(errors)) if m.any() else alphas.index(1e-1)
        fits.append(path[best])
        chosen[h] = alphas[best]
    _save(cache, name, _fits_to_arrays(fits, chosen, basis))
    return fits, chosen, basis


def _fits_to_arrays(fits, chosen, basis) -> dict[str, np.ndarray]:
    arrays = {"alpha": np.array([np.nan if chosen[h] is None else chosen[h] for h in range(len(fits))])}
    if basis is not None:
        arrays["basis"] = basis.numpy()
    for h, fit in enumerate(fits):
        if fit is not None:
            arrays.update({f"{name}{h}": a for name, a in zip(("xm", "ym", "w"), fit, strict=True)})
    return arrays


def _fits_from_arrays(arrays: dict[str, np.ndarray]):
    alpha = arrays["alpha"]
    chosen = {h: None if np.isnan(a) else float(a) for h, a in enumerate(alpha)}
    fits = [None if chosen[h] is None else tuple(arrays[f"{name}{h}"] for name in ("xm", "ym", "w"))
            for h in range(len(alpha))]
    basis = torch.from_numpy(arrays["basis"]) if "basis" in arrays else None
    return fits, chosen, basis


def windows_key(wins: dict[str, samples.Windows]) -> str:
    """A short fingerprint of the train and val windows a cached ridge was fitted on (anchors, context, targets,
    horizons): the cache folder's key covers the settings that make them, this covers everything else (a caller
    that keeps only some windows, a change to how windows are built), so a cached file never serves other rows."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        win = wins[split]
        h.update(split.encode() + repr(tuple(win.horizons_min)).encode())
        for a in (win.anchor, win.ctx, win.tgt):
            h.update(repr(a.shape).encode() + np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _load(cache: Path | None, name: str) -> dict[str, np.ndarray] | None:
    """The arrays of cache/name.npz (None: no cache, or not written yet)."""
    if cache is None or not (cache / f"{name}.npz").exists():
        return None
    with np.load(cache / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def _save(cache: Path | None, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write cache/name.npz atomically (runs of a Slurm array may write the same file at once: the last rename
    wins, and both wrote the same numbers)."""
    if cache is None:
        return
    with atomic_path(cache / f"{name}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def ridge_cache_key(settings: dict) -> str:
    """A short key for a ridge cache folder: every input the per-view ridge depends on (the caller's sample
    settings and file hashes), this module's ridge constants and RIDGE_CACHE_VERSION."""
    full = {**settings, "rank": RIDGE_RANK, "alphas": RIDGE_ALPHAS, "folds": CROSS_FIT_FOLDS,
            "version": RIDGE_CACHE_VERSION}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]


def view_ridge(table: samples.ScanTable, wins: dict[str, samples.Windows], eval_table: samples.ScanTable,
               eval_win: samples.Windows, *, means_min=(30.0, 60.0), day_only: bool = True,
               alphas=RIDGE_ALPHAS, rank: int = RIDGE_RANK,
               cache: Path | None = None) -> tuple[np.ndarray, dict[int, float | None]]:
    """The per-view ridge: the change z(t+h) − z(t) of each sky view from `samples.ridge_features` (its own view
    context + its ring neighbours at t + the horizon views below + the clock), one coefficient set shared by
    all views (fitted on every view's rows pooled, hence rotation-equivariant like the networks), penalty per
    horizon chosen on val (`view_ridge_fits`). Fitted on `table`'s wins["train"], applied to `eval_win` of
    `eval_table`: (N, H, P, D) and the penalties. `cache`: see `view_ridge_fits`."""
    fits, chosen, basis = view_ridge_fits(table, wins, means_min=means_min, day_only=day_only, alphas=alphas,
                                          rank=rank, cache=cache)
    pred = np.repeat(eval_table.z[eval_win.anchor][:, None], len(fits), axis=1)
    rows = _Rows(eval_table, eval_win, basis, means_min=means_min, day_only=day_only)
    for h, fit in enumerate(fits):
        if fit is not None:
            pred[:, h] = _predict(rows, [fit], h=h)[0]
    return pred.astype(np.float32), chosen


def ridge_start(table: samples.ScanTable, wins: dict[str, samples.Windows], *, means_min=(30.0, 60.0),
                day_only: bool = True, rank: int = RIDGE_RANK,
                cache: Path | None = None) -> tuple[dict[str, np.ndarray], dict[int, float | None]]:
    """The forecast the learned variants start from with residual_base=ridge: {"train", "val"} → (N, H, P, D).

    val: exactly the "ridge" baseline (`view_ridge`, fitted on all train windows, penalty per horizon chosen on
    val), which is also what evaluation adds to a variant's output on any other windows. train: cross-fitted by
    day with those penalties, each day's forecast from the ridge fitted without its day (as the damping is), so
    the network does not learn that an in-sample start needs no correction. Days go round-robin into at most
    CROSS_FIT_FOLDS folds (leave one day out up to that many days; each fold is one F × F solve). One day alone
    is fitted in-sample. A fold's fit subtracts its statistics from the whole train set's. `cache`: the folder
    of `view_ridge_fits`; the cross-fitted train forecast is kept there too (cache/start-<windows_key>.npz).
    """
    kw = dict(means_min=means_min, day_only=day_only)
    train_win = wins["train"]
    basis = principal_basis(table, rank, day_only=day_only)
    name = f"start-{windows_key(wins)}"
    cached = _load(cache, name)
    train_rows = None if cached is not None else _Rows(table, train_win, basis, **kw)
    fits, alphas, basis = view_ridge_fits(table, wins, rank=rank, cache=cache, train_rows=train_rows, **kw)
    val_rows = _Rows(table, wins["val"], basis, **kw)
    val = np.repeat(table.z[wins["val"].anchor][:, None], len(fits), axis=1)
    for h, fit in enumerate(fits):
        if fit is not None:
            val[:, h] = _predict(val_rows, [fit], h=h)[0]
    val = val.astype(np.float32)
    if cached is not None:
        return {"train": cached["train"], "val": val}, alphas
    train = np.repeat(table.z[train_win.anchor][:, None], len(train_win.horizons_min), axis=1)
    days = table.day[train_win.anchor]
    unique_days = np.unique(days)
    folds = min(CROSS_FIT_FOLDS, len(unique_days))
    for h, alpha in alphas.items():
        if alpha is None:
            continue  # too few rows: the start stays persistence, as in `view_ridge`
        total = _fit(train_rows, h=h)
        if folds == 1:
            train[:, h] = _predict(train_rows, [total.solve(alpha)], h=h)[0]
            continue
        for fold in range(folds):
            held = np.isin(days, unique_days[fold::folds])
            rest = copy.deepcopy(total)
            _fit(train_rows, h=h, keep=held, sign=-1.0, normal=rest)
            train[held, h] = _predict(train_rows, [rest.solve(alpha)], h=h, keep=held)[0][held]
    train = train.astype(np.float32)
    _save(cache, name, {"train": train})
    return {"train": train, "val": val}, alphas


def forecasts(b_train: dict | None, b_eval: dict,
              damping: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The batch-wise embedding baselines on the evaluation batch (the per-view ridge, which streams its own
    batches, is `view_ridge`); also returns the damping (fitted on b_train unless given, e.g. by
    fit_damping_by_day; then b_train is not read and may be None)."""
    if damping is None and b_train is None:
        raise ValueError("forecasts needs b_train to fit the damping, or the damping")
    damping = fit_damping(b_train) if damping is None else damping
    preds = {"persistence": _persist(b_eval),
             "smart_persistence": damped_forecast(b_eval, np.ones_like(damping)),
             "damped_anomaly": damped_forecast(b_eval, damping),
             "climatology": damped_forecast(b_eval, np.zeros_like(damping))}
    return preds, {"damping": damping}


def cloud_fraction(table: samples.ScanTable, win: samples.Windows) -> dict[str, np.ndarray]:
    """Scalar cloud-fraction baselines (N, H, P): per-preset persistence and the anchor scan's 8-preset mean."""
    H = win.tgt.shape[1]
    now = table.cloud[win.anchor]  # (N, P), NaN where missing
    mean = np.nanmean(np.where(table.present[win.anchor], now, np.nan), axis=1, keepdims=True)
    return {"cf_persistence": np.repeat(now[:, None], H, axis=1),
            "cf_preset_mean": np.repeat(np.broadcast_to(mean, now.shape)[:, None], H, axis=1)}


# data.synthetic.oracle's ceilings: advection (knows the whole field), regional cover, and the view-limited
# advection oracles that know only what the sky row (view) or the sky and horizon rows (view_horizon) saw.
ORACLE_KINDS = ("advect", "cover", "view", "view_horizon")


def oracle_cloud_fraction(table: samples.ScanTable, win: samples.Windows, raw_dir: str | Path | None,
                          horizons_min) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """data.synthetic's cloud-fraction oracles as ceilings: ({name: (N, H, P)}, truth at the targets, status).

    Reads RAW/<VSN>/truth.parquet: oracle_{kind}_cf_{h} (ORACLE_KINDS; the oracle's forecast made at the anchor
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
    names = ["cloud_fraction"] + [f"oracle_{kind}_cf_{h:g}" for kind in ORACLE_KINDS for h in horizons_min]
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
    for kind in ORACLE_KINDS:
        cols = [names.index(f"oracle_{kind}_cf_{h:g}") for h in horizons_min]
        if any(names[c] in have for c in cols):
            out[f"cf_oracle_{kind}"] = np.stack([by_row[rows, c] for c in cols], axis=1)
    return out, target, f"oracles from {raw_dir}: {', '.join(have)}, scored against its cloud_fraction"
