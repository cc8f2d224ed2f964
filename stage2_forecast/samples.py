"""Stage-2 samples: stage-1 embeddings grouped into scans, context/target windows, standardisation, view tokens.

A *scan* is one loop of the camera over the P = 8 sky presets (captures ~3 s apart, one loop every few
minutes); a new scan starts when the gap to the previous capture exceeds `gap_s`. Scans live in a table with
one slot per azimuth column (missing presets masked); the horizon row's captures (data.formats.HORIZON_PRESETS,
present when the data was made with `--rows sky,horizon`) fill a second table of the same shape. Forecast
targets are the sky row's views; the horizon row is context only. A *sample* is (node, anchor scan t): the
context is the scans nearest t - k·step (k = 0..T-1) and the targets are the scans nearest t + h for each
horizon h, each within a tolerance, on the same local day as t (hence the same split), else masked. Targets
are strictly after t, so never inside the context. By default anchors and targets are both in daylight (night
anchors inflate the long horizons' persistence error with the sunrise jump, which no method can see coming).
Every table array has one extra all-masked row at the end, so index -1 (a masked slot) gathers zeros without
special cases.

    table = load_scan_table(stage1_run)             # reads RUN/embeddings.{parquet,json} + prepared index
    win = build_windows(table, horizons_min=(5, 15, 30, 60), context_scans=3, split="train")
    batch = gather(table, win, idx, means_min=(30, 60))   # + view_x (B, R, P, K, D): what every model sees

The *view context* (`view_context`) is the one input assembly shared by the networks and the per-view ridge:
per row R (sky, horizon if present), column P and slot K = the T context scans and then the mean of each view
over the scans of the last 30 and 60 minutes (up to and including t), with its mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from data.dataset import normalised_frames
from data.formats import HORIZON_PRESETS, SKY_PRESETS, preset_column, preset_row
from sagecast_common.cli import UserError, read_json, require

# both = the pooled vectors of both modalities; grid = the encoders' g × g feature maps, (row, col, channel)
# flattened, as the stage-1 export writes them (embeddings.parquet).
FEATURES = {"rgb": ("emb_rgb",), "thermal": ("emb_thermal",), "both": ("emb_rgb", "emb_thermal"),
            "grid": ("grid_rgb", "grid_thermal")}


@dataclass
class ScanTable:
    """Scans × presets. Arrays have S + 1 rows (last = masked sentinel); z is filled by `standardise`."""

    vsn: np.ndarray  # (S+1,) str
    time_ns: np.ndarray  # (S+1,) int64, first capture of the scan
    day: np.ndarray  # (S+1,) int64, node-local date as an ordinal
    split: np.ndarray  # (S+1,) str
    sun_elev: np.ndarray  # (S+1,) float32 degrees
    solar_hour: np.ndarray  # (S+1,) float32, local solar time from UTC + longitude / 15
    location: np.ndarray  # (S+1,) str "lat,lon" of the node's registry location period
    present: np.ndarray  # (S+1, P) bool
    is_day: np.ndarray  # (S+1, P) bool
    emb: np.ndarray  # (S+1, P, D) float32 stage-1 embedding, concat of the chosen features
    rows: np.ndarray  # (S+1, P) int64 row in the prepared arrays, -1 if missing
    cloud: np.ndarray  # (S+1, P) float32 cloud_fraction from the prepared index
    prepared_dir: str
    z: np.ndarray | None = None  # (S+1, P, D) standardised embedding
    horizon_present: np.ndarray | None = None  # (S+1, P) bool, the horizon row (None: sky row only)
    horizon_emb: np.ndarray | None = None  # (S+1, P, D)
    horizon_z: np.ndarray | None = None  # (S+1, P, D), standardised with the sky row's statistics
    means: dict = field(default_factory=dict)  # minutes → (S+1,) first scan of each scan's mean window

    @property
    def n_rows(self) -> int:
        return 1 if self.horizon_present is None else 2

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(z, present) of row r: 0 = sky, 1 = horizon."""
        return (self.z, self.present) if r == 0 else (self.horizon_z, self.horizon_present)


@dataclass
class Windows:
    """Samples: anchor scan, context scans (T, -1 = masked) and target scans (H, -1 = masked)."""

    anchor: np.ndarray  # (N,)
    ctx: np.ndarray  # (N, T)
    tgt: np.ndarray  # (N, H)
    horizons_min: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.anchor)


def read_stage1(stage1_run: str | Path) -> tuple[pd.DataFrame, dict]:
    """The stage-1 embeddings table and its sidecar; missing or unreadable ones are a UserError naming the file."""
    run = Path(stage1_run)
    made_by = f"sagecast-stage1-export --run {run}"
    path = require(run / "embeddings.parquet", made_by=made_by, what="stage-1 embeddings")
    meta = read_json(run / "embeddings.json", made_by=made_by, what="stage-1 embeddings sidecar")
    try:
        return pd.read_parquet(path), meta
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): rerun `{made_by}`") from None


def load_scan_table(stage1_run: str | Path, *, features: str = "both", gap_s: float = 60.0,
                    prepared_dir: str | None = None) -> ScanTable:
    """Group the stage-1 embeddings into scans, joined with the prepared index for time/day/cloud facts."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: expected one of {sorted(FEATURES)}")
    emb, meta = read_stage1(stage1_run)
    missing = [c for c in FEATURES[features] if c not in emb.columns]
    if missing:
        raise ValueError(f"features={features}: {stage1_run}/embeddings.parquet has no {missing} columns; export "
                         f"them with a stage1_jea.export that writes grid features (python -m stage1_jea.export "
                         f"--run {stage1_run})")
    prepared = Path(prepared_dir or meta["prepared_dir"])
    if not (prepared / "index.parquet").exists():
        raise FileNotFoundError(f"{prepared / 'index.parquet'} is missing (prepared_dir of {stage1_run})")
    index = pd.read_parquet(prepared / "index.parquet",
                            columns=["vsn", "timestamp", "position", "row", "lat", "lon", "sun_elevation",
                                     "local_date", "cloud_fraction"])
    df = emb.merge(index, on=["vsn", "timestamp", "position"], how="inner", validate="one_to_one")
    if len(df) < len(emb):
        raise ValueError(f"{len(emb) - len(df)} embeddings of {stage1_run} have no row in {prepared}/index.parquet")
    df = df[df["position"].isin(SKY_PRESETS + HORIZON_PRESETS)].sort_values(["vsn", "timestamp"], kind="stable")
    df = df.reset_index(drop=True)
    ns = df["timestamp"].astype("int64").to_numpy()
    new_node = (df["vsn"] != df["vsn"].shift()).to_numpy()
    gap = np.diff(ns, prepend=ns[0] - 1) > gap_s * 1e9
    df["scan"] = np.cumsum(new_node | gap) - 1
    df = df.drop_duplicates(["scan", "position"], keep="first")
    first = df.groupby("scan", sort=True).first()
    S, P = len(first), len(SKY_PRESETS)
    # the slot is the azimuth column (the rotation tests and the ring neighbours rely on slot == column)
    slot = df["position"].map(preset_column).to_numpy()
    is_sky = (df["position"].map(preset_row) == "sky").to_numpy()
    day = pd.to_datetime(df["local_date"].astype(str)).map(pd.Timestamp.toordinal).to_numpy()
    scan_day = pd.to_datetime(first["local_date"].astype(str)).map(pd.Timestamp.toordinal).to_numpy()
    # A capture past local midnight belongs to the next day (maybe another split): mask it in this scan.
    same_day = day == scan_day[df["scan"].to_numpy()]
    keep, keep_horizon = same_day & is_sky, same_day & ~is_sky
    vectors = np.concatenate([np.stack(df[c].to_numpy()).astype(np.float32) for c in FEATURES[features]], axis=1)

    def grid(values, fill, dtype, rows=keep):
        out = np.full((S + 1, P) + values.shape[1:], fill, dtype=dtype)
        out[df["scan"].to_numpy()[rows], slot[rows]] = values
        return out

    hours = ((first["timestamp"] - first["timestamp"].dt.normalize()).dt.total_seconds() / 3600.0).to_numpy()
    return ScanTable(
        vsn=np.append(first["vsn"].to_numpy(dtype=object), ""),
        time_ns=np.append(first["timestamp"].astype("int64").to_numpy(), 0),
        day=np.append(scan_day, -1),
        split=np.append(first["split"].to_numpy(dtype=object), ""),
        sun_elev=np.append(first["sun_elevation"].to_numpy(np.float32), 0.0).astype(np.float32),
        solar_hour=np.append((hours + first["lon"].to_numpy() / 15.0) % 24.0, 0.0).astype(np.float32),
        location=np.append([f"{a:.3f},{o:.3f}" for a, o in zip(first["lat"], first["lon"], strict=True)], ""),
        present=grid(np.ones(keep.sum(), bool), False, bool),
        is_day=grid(df["is_day"].to_numpy(bool)[keep], False, bool),
        emb=grid(vectors[keep], 0.0, np.float32),
        rows=grid(df["row"].to_numpy(np.int64)[keep], -1, np.int64),
        cloud=grid(df["cloud_fraction"].to_numpy(np.float32)[keep], np.nan, np.float32),
        prepared_dir=str(prepared.resolve()),
        horizon_present=grid(np.ones(keep_horizon.sum(), bool), False, bool, keep_horizon) if keep_horizon.any()
        else None,
        horizon_emb=grid(vectors[keep_horizon], 0.0, np.float32, keep_horizon) if keep_horizon.any() else None,
    )


def standardise(table: ScanTable, *, day_only: bool = True, mean=None, std=None) -> tuple[np.ndarray, np.ndarray]:
    """Fill `table.z`; statistics from the train split's (daytime) captures unless given. Returns (mean, std)."""
    if mean is None:
        use = table.present & (table.split == "train")[:, None] & (table.is_day if day_only else True)
        if not use.any():
            raise ValueError("no train-split captures to compute standardisation statistics from")
        x = table.emb[use]
        # A dimension (nearly) constant on train (a dead ReLU channel of a briefly trained encoder) but not on
        # val/test would blow up to thousands of standard units and swamp every MSE: floor its scale at a
        # tenth of the typical dimension's.
        mean, std = x.mean(0), x.std(0)
        std = np.maximum(std, 0.1 * np.median(std)) + 1e-6
    table.z = np.where(table.present[..., None], (table.emb - mean) / std, 0.0).astype(np.float32)
    if table.horizon_emb is not None:
        # One affine map for both rows: the models' linear maps and row embedding absorb the horizon row's offset,
        # and the checkpoint's single (mean, std) stays the whole standardisation.
        table.horizon_z = np.where(table.horizon_present[..., None], (table.horizon_emb - mean) / std,
                                   0.0).astype(np.float32)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def restrict_train_days(table: ScanTable, n_days: int | None, *, seed: int = 0) -> np.ndarray:
    """Keep only the first `n_days` train days in a fixed seeded order (nested: the first 10 are inside the first
    20); the other train scans leave every split (split ""), so standardisation, climatology, windows and every
    fitted baseline see only the kept days. Val and test are untouched. Returns the kept day ordinals."""
    train = table.split == "train"
    days = np.unique(table.day[train])
    order = np.random.default_rng(seed).permutation(days)  # the order does not depend on n_days: nested sets
    if n_days is None:
        return np.sort(order)
    if n_days > len(days):
        raise UserError(f"train_days={n_days}: only {len(days)} train days in the data")
    kept = np.sort(order[:n_days])
    table.split = np.where(train & ~np.isin(table.day, kept), "", table.split).astype(object)
    return kept


def window_start(table: ScanTable, minutes: float) -> np.ndarray:
    """(S+1,) per scan the first scan of its node and local day within (t − minutes, t] (scans are contiguous and
    time-sorted per node and day). Cached on the table: a few bytes per scan, unlike the means themselves."""
    if minutes not in table.means:
        S = len(table.time_ns) - 1
        lo = np.zeros(S + 1, np.int64)
        for vsn, day in {(v, d) for v, d in zip(table.vsn[:S], table.day[:S], strict=True)}:
            idx = np.flatnonzero((table.vsn[:S] == vsn) & (table.day[:S] == day))
            t = table.time_ns[idx]
            lo[idx] = idx[np.searchsorted(t, t - minutes * 60e9, side="right")]
        lo[S] = S
        table.means[minutes] = lo
    return table.means[minutes]


def context_mean(table: ScanTable, r: int, minutes: float, scans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `scans` (B,) and each view of row r: the mean standardised embedding over the node's scans of
    the same local day in (t − minutes, t], and whether any was present: ((B, P, D), (B, P)). Computed per batch
    (a table-wide cache would hold another (S, P, D) array per row and window)."""
    z, present = table.row(r)
    lo = window_start(table, minutes)[scans]
    span = int((scans - lo).max(initial=0)) + 1
    back = scans[:, None] - np.arange(span)[None]  # (B, span), most recent first
    back = np.where(back >= lo[:, None], back, -1)  # -1: the all-masked sentinel
    use = present[back]  # (B, span, P)
    count = use.sum(1)
    total = (z[back] * use[..., None]).sum(1)
    return (total / np.maximum(count, 1)[..., None]).astype(np.float32), count > 0


def view_context(table: ScanTable, anchor: np.ndarray, ctx: np.ndarray,
                 means_min=(30.0, 60.0)) -> tuple[np.ndarray, np.ndarray]:
    """The inputs every stage-2 model and the per-view ridge see: anchor (B,), ctx (B, T) scan indices →
    x (B, R, P, K, D) and mask (B, R, P, K), K = T context scans, then one mean per entry of `means_min`."""
    xs, ms = [], []
    for r in range(table.n_rows):
        z, present = table.row(r)
        means = [context_mean(table, r, w, anchor) for w in means_min]
        xs.append(np.stack([z[ctx[:, k]] for k in range(ctx.shape[1])] + [m for m, _ in means], axis=2))
        ms.append(np.stack([present[ctx[:, k]] for k in range(ctx.shape[1])] + [s for _, s in means], axis=2))
    return np.stack(xs, axis=1), np.stack(ms, axis=1)


def _nearest(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the element of sorted `times` nearest each `wanted` (same shape as `wanted`)."""
    pos = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
    left, right = times[pos - 1], times[pos]
    return np.where(np.abs(wanted - left) <= np.abs(right - wanted), pos - 1, pos)


def scan_step_min(table: ScanTable) -> float:
    """Typical scan cadence: the median gap between consecutive scans of a node, in minutes."""
    same = table.vsn[1:-1] == table.vsn[:-2]
    gaps = np.diff(table.time_ns[:-1])[same] / 60e9
    if len(gaps) == 0:
        raise ValueError("need at least two scans of one node to know the scan cadence")
    return float(np.median(gaps))


def build_windows(table: ScanTable, *, horizons_min=(5.0, 15.0, 30.0, 60.0), context_scans: int = 3,
                  step_min: float | None = None, tolerance_min: float | None = None, split: str | None = None,
                  day_only: bool = True, day_anchors: bool = True) -> Windows:
    """All samples of one split (None = all), vectorised over anchors with `searchsorted` per node.

    A context slot k holds the scan nearest t - k·step, a target the scan nearest t + h, each accepted only
    within `tolerance_min` (default step/2) and on the anchor's local day; a gap leaves the slot masked.
    Samples without any valid (daytime, if `day_only`) target are dropped, and so are night anchors (no
    daytime capture in the anchor scan) if `day_anchors`.
    """
    step = step_min or scan_step_min(table)
    tol = tolerance_min if tolerance_min is not None else step / 2
    if min(horizons_min) <= tol:
        raise ValueError(f"horizon {min(horizons_min)} min must exceed the tolerance {tol} min")
    S = len(table.time_ns) - 1
    t = table.time_ns[:S].astype(np.float64) / 60e9
    anchors, ctx, tgt = [], [], []
    for vsn in pd.unique(table.vsn[:S]):
        idx = np.flatnonzero(table.vsn[:S] == vsn)  # contiguous, time-sorted
        tn, dn = t[idx], table.day[idx]
        a = np.arange(len(idx))

        def pick(offsets, after, tn=tn, dn=dn, a=a, idx=idx):
            wanted = tn[:, None] + np.asarray(offsets, np.float64)[None]
            j = _nearest(tn, wanted)
            ok = (np.abs(tn[j] - wanted) <= tol) & (dn[j] == dn[:, None])
            ok &= (j > a[:, None]) if after else (j <= a[:, None])
            return np.where(ok, idx[j], -1)

        c = pick([-k * step for k in range(context_scans)], after=False)
        c[:, 1:] = np.where(c[:, 1:] == idx[:, None], -1, c[:, 1:])  # slot k >= 1 never repeats the anchor
        anchors.append(idx), ctx.append(c), tgt.append(pick(list(horizons_min), after=True))
    anchor, ctx_a, tgt_a = np.concatenate(anchors), np.concatenate(ctx), np.concatenate(tgt)
    usable = table.present[tgt_a] & (table.is_day[tgt_a] if day_only else True) & table.present[anchor][:, None]
    keep = usable.any(axis=(1, 2))
    if day_anchors:
        keep &= (table.present[anchor] & table.is_day[anchor]).any(axis=1)
    if split is not None:
        keep &= table.split[anchor] == split
    return Windows(anchor[keep], ctx_a[keep], tgt_a[keep], tuple(float(h) for h in horizons_min))


def load_images(prepared_dir: str | Path, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Full frames for prepared `rows` (any shape, -1 = zeros), normalised exactly as PairedSkyDataset does."""
    flat = rows.reshape(-1)
    rgb, th = normalised_frames(prepared_dir, np.maximum(flat, 0))
    missing = torch.from_numpy(flat < 0).view(-1, 1, 1, 1)
    rgb, th = rgb.masked_fill(missing, 0.0), th.masked_fill(missing, 0.0)
    return {"rgb": rgb.reshape(*rows.shape, *rgb.shape[1:]), "thermal": th.reshape(*rows.shape, *th.shape[1:])}


def hour_bin(solar_hour: np.ndarray) -> np.ndarray:
    """Solar hour → 0..23, the climatology's time-of-day bin."""
    return solar_hour.astype(np.int64) % 24


# What the networks read from a batch (apart from the residual start they add to): the per-ridge test asserts that
# the networks run on these keys alone and that the per-view ridge's design is built from them too.
MODEL_INPUTS = ("view_x", "view_mask", "view_dt", "solar_hour", "sun_elev")


def ridge_features(batch: dict[str, torch.Tensor], basis: torch.Tensor | None = None) -> torch.Tensor:
    """The per-view ridge's design, from the model inputs of the batch (MODEL_INPUTS) → (B, P, F). View c's row:
    its own K sky slots (the scans, the 30/60-min means), its two sky ring neighbours c ± 1 at t, with a horizon
    row the horizon views c − 1, c, c + 1 at t, each slot's D-vector projected on `basis` (D, r), the train
    embeddings' top r principal directions (None: all D), and the networks' clock (sin, cos of the solar hour,
    sun elevation / 90): F = (K + 2 + 3·[R = 2])·r + 3. Rotating the ring rotates the rows. Missing slots are
    zeros, as the networks see them; what the ridge leaves out is the exact scan times (view_dt), the
    embeddings beyond their top r directions, and anything nonlinear.

    Memory and time (why a projection): the ridge holds one F × F Gram matrix and its eigenvectors in float64,
    2·8·F² bytes, and decomposes it once per horizon. On `make compare`'s sky (resnet10t, pooled D = 1,024, both
    rows, K = 5) all D would give F = 10,243: 1.7 GB and ~8 min per horizon for the eigendecomposition (cubic in
    F: 7.4 s measured at F = 2,563 on 2 shared cores); its 2×2 grids (D = 4,096) 27 GB. With r = 256
    (baselines.RIDGE_RANK) F = 2,563: 0.1 GB on pooled features and on grids alike (the whole-context ridge it
    replaces needed ~19 GB on grids).
    """
    view_x = batch["view_x"] if basis is None else batch["view_x"] @ basis
    B, R, P, K, D = view_x.shape
    cols = torch.arange(P)
    angle = 2 * np.pi * batch["solar_hour"] / 24.0
    clock = torch.stack([angle.sin(), angle.cos(), batch["sun_elev"] / 90.0], dim=-1)  # as models.Encodings
    parts = [view_x[:, 0].flatten(2), view_x[:, 0, (cols - 1) % P, 0], view_x[:, 0, (cols + 1) % P, 0]]
    if R > 1:
        parts += [view_x[:, 1, (cols + s) % P, 0] for s in (-1, 0, 1)]
    return torch.cat(parts + [clock[:, None].expand(B, P, 3).to(view_x.dtype)], dim=-1)


def gather(table: ScanTable, win: Windows, idx: np.ndarray, *, day_only: bool = True, clim: np.ndarray | None = None,
           images: bool = False, target_images: bool = False, base: np.ndarray | None = None,
           means_min: tuple[float, ...] | None = (30.0, 60.0)) -> dict[str, torch.Tensor]:
    """One batch: context (B,T,P,D) + mask, targets (B,H,P,D) + mask, conditioning, optional images.

    With `means_min` (None: left out, for whole-split batches of the embedding baselines), the batch also holds
    the view context of `view_context`: view_x (B,R,P,K,D), view_mask (B,R,P,K) and view_dt (B,K), each slot's
    time offset in minutes (a mean's: minus half its window).

    With `clim` (P, 24, D), the train diurnal climatology (baselines.fit_climatology), the batch also holds
    clim_now (B,P,D) at the anchor's solar hour and clim_tgt (B,H,P,D) at each target scan's solar hour.
    With `base` (N, H, P, D) for all of `win` (baselines.ridge_start), the batch holds base (B,H,P,D): the
    forecast a residual_base=ridge model adds its output to.
    """
    a, c, g = win.anchor[idx], win.ctx[idx], win.tgt[idx]
    t = table.time_ns
    tgt_mask = table.present[g] & table.present[a][:, None] & (table.is_day[g] if day_only else True)
    batch = {
        "ctx_z": torch.from_numpy(table.z[c]),
        "ctx_mask": torch.from_numpy(table.present[c]),
        "ctx_dt": torch.from_numpy(np.where(c >= 0, (t[c] - t[a][:, None]) / 60e9, 0.0).astype(np.float32)),
        "sun_elev": torch.from_numpy(table.sun_elev[a]),
        "solar_hour": torch.from_numpy(table.solar_hour[a]),
        "tgt_z": torch.from_numpy(table.z[g]),
        "tgt_mask": torch.from_numpy(tgt_mask),
    }
    if means_min is not None:
        x, m = view_context(table, a, c, means_min)
        batch["view_x"], batch["view_mask"] = torch.from_numpy(x), torch.from_numpy(m)
        mean_dt = np.broadcast_to(-np.asarray(means_min, np.float32) / 2, (len(a), len(means_min)))
        batch["view_dt"] = torch.from_numpy(np.concatenate([batch["ctx_dt"].numpy(), mean_dt], axis=1))
    if clim is not None:
        P = clim.shape[0]
        batch["clim_now"] = torch.from_numpy(clim[np.arange(P), hour_bin(table.solar_hour[a])[:, None]])
        batch["clim_tgt"] = torch.from_numpy(clim[np.arange(P), hour_bin(table.solar_hour[g])[..., None]])
    if base is not None:
        if len(base) != len(win):
            raise ValueError(f"base has {len(base)} rows for {len(win)} windows")
        batch["base"] = torch.from_numpy(np.ascontiguousarray(base[idx]))
    if images:
        batch.update({f"{k}": v for k, v in load_images(table.prepared_dir, table.rows[a]).items()})
    if target_images:
        batch.update({f"tgt_{k}": v for k, v in load_images(table.prepared_dir, table.rows[g]).items()})
    return batch
