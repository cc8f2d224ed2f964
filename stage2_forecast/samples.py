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

The optional *cloud motion* (`read_motion`, `join_motion`; stage-2 config `motion=PATH`): one vector per scan
(m/s toward east, north) from a table with columns vsn, timestamp, motion_u, motion_v (data.synthetic's
truth.parquet has them). Per slot the batch holds the scan's vector, or for a mean slot the mean of its scans'
vectors (the motion that moved what the mean shows, its measurement noise averaged down), and whether there
was one; `project_motion` turns it into each view's own frame, so that no input carries an absolute direction.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from data.dataset import normalised_frames
from data.formats import HORIZON_PRESETS, SKY_PRESETS, preset_column, preset_row
from data.sky import preset_azimuth_deg
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
    motion: np.ndarray | None = None  # (S+1, 2) float32 cloud motion m/s (east, north), 0 where none (join_motion)
    has_motion: np.ndarray | None = None  # (S+1,) bool

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


def read_stage1(stage1_run: str | Path, vectors: tuple[str, ...] = ()) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The stage-1 embeddings' capture columns (every column that is not a vector), the `vectors` columns side by
    side as one float32 (rows, dims) array in the same row order, and the sidecar. The vectors are read from
    Arrow's flat buffers, and only those asked for: as pandas objects, the pooled and grid vectors of
    `make compare`'s 171,613 captures took GBs. Missing or unreadable files are a UserError naming the file;
    a missing vector column is a ValueError (the caller says which export writes it)."""
    run = Path(stage1_run)
    made_by = f"sagecast-stage1-export --run {run}"
    path = require(run / "embeddings.parquet", made_by=made_by, what="stage-1 embeddings")
    meta = read_json(run / "embeddings.json", made_by=made_by, what="stage-1 embeddings sidecar")
    try:
        schema = pq.read_schema(path)
        is_vector = {f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                     or pa.types.is_fixed_size_list(f.type)}
        missing = [c for c in vectors if c not in is_vector]
        if missing:
            raise ValueError(f"{path} has no {missing} columns")
        parquet = pq.ParquetFile(path)
        captures = parquet.read(columns=[n for n in schema.names if n not in is_vector]).to_pandas()
        out = _read_vectors(parquet, vectors, len(captures))
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is unreadable ({e}): rerun `{made_by}`") from None
    return captures, out, meta


def _read_vectors(parquet: pq.ParquetFile, names: tuple[str, ...], rows: int, batch: int = 8192) -> np.ndarray:
    """The list columns `names` side by side, (rows, dims) float32, filled batch by batch into one array: the
    peak is that array plus a batch, not the decoded columns, their flattened copies and a concatenation."""
    dims = [_flat_vectors(next(parquet.iter_batches(batch_size=1, columns=[n])).column(0), n).shape[1] if rows
            else 0 for n in names]
    out = np.empty((rows, sum(dims)), np.float32)
    for name, lo, d in zip(names, np.cumsum([0, *dims[:-1]]), dims, strict=True):
        start = 0
        for part in parquet.iter_batches(batch_size=batch, columns=[name]):
            block = _flat_vectors(part.column(0), name)
            if block.shape[1] != d or start + len(block) > rows:
                raise pa.ArrowInvalid(f"column {name} has vectors of unequal length or more rows than the table")
            out[start:start + len(block), lo:lo + d] = block
            start += len(block)
        if start != rows:
            raise pa.ArrowInvalid(f"column {name} has {start} rows, the table {rows}")
    return out


def _flat_vectors(array: pa.Array, name: str) -> np.ndarray:
    """A list array of equal-length float vectors as a (rows, dims) float32 array, with no per-row objects."""
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if array.null_count or (len(lengths) and lengths.min() != lengths.max()):
        raise pa.ArrowInvalid(f"column {name} has missing or unequal-length vectors")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(array), -1 if len(array) else 0)


def load_scan_table(stage1_run: str | Path, *, features: str = "both", gap_s: float = 60.0,
                    prepared_dir: str | None = None) -> ScanTable:
    """Group the stage-1 embeddings into scans, joined with the prepared index for time/day/cloud facts."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: expected one of {sorted(FEATURES)}")
    try:
        emb, flat, meta = read_stage1(stage1_run, FEATURES[features])
    except ValueError as e:
        raise ValueError(f"features={features}: {e}; export them with a stage1_jea.export that writes grid "
                         f"features (python -m stage1_jea.export --run {stage1_run})") from None
    emb["vector"] = np.arange(len(emb))  # the row of `flat`, carried through the join and the sort
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
    vectors = flat[df["vector"].to_numpy()]
    del flat

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
    return _window_mean(z, present, window_start(table, minutes)[scans], scans)


def _window_mean(values: np.ndarray, use: np.ndarray, lo: np.ndarray, scans: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean of `values` (S+1, ..., F) over the scans lo..scan where `use` (S+1, ...), per scan of `scans` (B,):
    ((B, ..., F), (B, ...) whether any was used)."""
    span = int((scans - lo).max(initial=0)) + 1
    back = scans[:, None] - np.arange(span)[None]  # (B, span), most recent first
    back = np.where(back >= lo[:, None], back, -1)  # -1: the all-masked sentinel
    ok = use[back]  # (B, span, ...)
    count = ok.sum(1)
    total = (values[back] * ok[..., None]).sum(1)
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


def motion_context(table: ScanTable, anchor: np.ndarray, ctx: np.ndarray,
                   means_min=(30.0, 60.0)) -> tuple[np.ndarray, np.ndarray]:
    """The cloud motion per slot of `view_context`: (B, K, 2) m/s (east, north) and (B, K) whether there is one.
    A scan slot holds its scan's vector; a mean slot the mean over the scans of its window that have one (what
    moved the clouds the mean shows, with the per-loop measurement noise averaged down)."""
    uv, has = table.motion, table.has_motion
    means = [_window_mean(uv, has, window_start(table, w)[anchor], anchor) for w in means_min]
    x = np.stack([uv[ctx[:, k]] for k in range(ctx.shape[1])] + [m for m, _ in means], axis=1)
    m = np.stack([has[ctx[:, k]] for k in range(ctx.shape[1])] + [s for _, s in means], axis=1)
    return x.astype(np.float32), m


# The cloud-motion table: stage-2 config `motion=PATH`.
MOTION_COLUMNS = ("vsn", "timestamp", "motion_u", "motion_v")
MOTION_MAX_AGE_MIN = 15.0  # a scan takes the latest vector at or before its start, at most this old
MOTION_SCALE_MS = 10.0  # m/s per unit of the projected components (low-cloud winds are ~2–15 m/s)


def motion_files(path: str | Path) -> list[Path]:
    """The files a motion PATH names (read_motion): the file itself, or every **/truth.parquet under a folder."""
    p = Path(path)
    if p.is_dir():
        # glob.glob, not Path.glob: it follows the linked node folders that compare --heldout-node makes
        files = [Path(f) for f in sorted(glob.glob(str(p / "**" / "truth.parquet"), recursive=True))]
        if not files:
            raise UserError(f"motion={p}: no truth.parquet under this folder (give a data.synthetic raw folder, or "
                            f"a parquet/CSV table with columns {', '.join(MOTION_COLUMNS)})")
        return files
    if p.is_file():
        return [p]
    raise UserError(f"motion={p}: no such file or folder")


def read_motion(path: str | Path) -> pd.DataFrame:
    """A cloud-motion table → columns vsn, time_ns (int64 UTC), motion_u, motion_v (m/s toward east, north; NaN
    where there was nothing to track), sorted. PATH is a parquet or CSV file with columns vsn, timestamp,
    motion_u, motion_v (a wind profiler's, atmospheric motion vectors', a plugin's), or a folder: every
    **/truth.parquet under it (data.synthetic's raw folder). Anything missing or unreadable is a UserError."""
    frames = []
    for f in motion_files(path):
        try:
            names = list(pd.read_csv(f, nrows=0).columns) if f.suffix.lower() == ".csv" else pq.read_schema(f).names
            missing = [c for c in MOTION_COLUMNS if c not in names]
            if missing:
                raise UserError(f"motion table {f} has no column {', '.join(missing)} (it needs "
                                f"{', '.join(MOTION_COLUMNS)})")
            df = (pd.read_csv(f, usecols=list(MOTION_COLUMNS)) if f.suffix.lower() == ".csv"
                  else pd.read_parquet(f, columns=list(MOTION_COLUMNS)))
            frames.append(pd.DataFrame({
                "vsn": df["vsn"].astype(str),
                "time_ns": pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ns").astype("int64"),
                "motion_u": pd.to_numeric(df["motion_u"]).astype(np.float32),
                "motion_v": pd.to_numeric(df["motion_v"]).astype(np.float32)}))
        except (pa.ArrowException, OSError, ValueError, TypeError) as e:
            raise UserError(f"motion table {f} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return pd.concat(frames).sort_values(["vsn", "time_ns"], kind="stable").reset_index(drop=True)


def join_motion(table: ScanTable, motion: pd.DataFrame, *, source: str = "the motion table") -> None:
    """Fill `table.motion` (S+1, 2) and `table.has_motion` (S+1,): per scan the latest row of its node at or before
    the scan's first capture, at most MOTION_MAX_AGE_MIN old (never a later one: the forecast must not read a
    vector measured after t). On data.synthetic's truth that is the scan loop's own vector. No row, or NaN (no
    low cloud to track): 0 and has_motion False. A table that matches no scan at all is a UserError (the wrong
    sky's table, e.g. the training sky's for a held-out one)."""
    S = len(table.time_ns) - 1
    uv, has, matched = np.zeros((S + 1, 2), np.float32), np.zeros(S + 1, bool), 0
    max_age = int(MOTION_MAX_AGE_MIN * 60e9)
    for vsn in pd.unique(table.vsn[:S]):
        rows = motion[motion["vsn"] == vsn]
        if rows.empty:
            continue
        idx = np.flatnonzero(table.vsn[:S] == vsn)
        t = rows["time_ns"].to_numpy()
        j = np.searchsorted(t, table.time_ns[idx], side="right") - 1
        ok = (j >= 0) & (table.time_ns[idx] - t[np.maximum(j, 0)] <= max_age)
        vec = rows[["motion_u", "motion_v"]].to_numpy(np.float32)[j[ok]]
        finite = np.isfinite(vec).all(axis=1)
        uv[idx[ok][finite]], has[idx[ok][finite]] = vec[finite], True
        matched += int(ok.sum())
    if matched == 0:
        raise UserError(f"{source}: no row within {MOTION_MAX_AGE_MIN:g} min before any scan of "
                        f"{', '.join(map(str, pd.unique(table.vsn[:S])))} (is it this sky's table?)")
    table.motion, table.has_motion = uv, has


def view_azimuths_deg() -> np.ndarray:
    """(P,) azimuth (degrees clockwise from north) of each column's views (data.sky: column × 45°, no mount
    offset; both rows of a column face the same way)."""
    return np.array([preset_azimuth_deg(p) for p in SKY_PRESETS], np.float32)


def project_motion(motion: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) m/s (east, north) + (B, K) mask → (B, P, K, 3) per view: the component along its azimuth (away
    from the node, outward), across it (clockwise, toward column c + 1), both / MOTION_SCALE_MS, and the mask.

    Each view sees the motion only in its own frame: rotating the ring of views by k columns together with the
    motion vector by k × 45° leaves every view's features as they were, so the networks stay
    rotation-equivariant; rotating one without the other changes them.
    """
    az = torch.deg2rad(torch.as_tensor(view_azimuths_deg(), dtype=motion.dtype, device=motion.device))  # (P,)
    u, v = motion[..., 0, None], motion[..., 1, None]  # (B, K, 1)
    along = (u * az.sin() + v * az.cos()) / MOTION_SCALE_MS  # (B, K, P)
    across = (u * az.cos() - v * az.sin()) / MOTION_SCALE_MS
    flag = mask[..., None].to(motion.dtype).expand_as(along)
    return torch.stack([along, across, flag], dim=-1).transpose(1, 2)


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
# the networks run on these keys alone and that the per-view ridge's design is built from them too. motion and
# motion_mask are there only when the table has a motion table joined (stage-2 config `motion`).
MODEL_INPUTS = ("view_x", "view_mask", "view_dt", "solar_hour", "sun_elev", "motion", "motion_mask")
MOTION_RANK = 16  # principal coordinates per view that the ridge's motion products take (memory, time)


def ridge_features(batch: dict[str, torch.Tensor], basis: torch.Tensor | None = None) -> torch.Tensor:
    """The per-view ridge's design, from the model inputs of the batch (MODEL_INPUTS) → (B, P, F). View c's row:
    its own K sky slots (the scans, the 30/60-min means), its two sky ring neighbours c ± 1 at t, with a horizon
    row the horizon views c − 1, c, c + 1 at t, each row's ring mean at t (over the views that are there), each
    slot's D-vector projected on `basis` (D, r), the train embeddings' top r principal directions (None: all D),
    and the networks' clock (sin, cos of the solar hour, sun elevation / 90): F = (K + 2 + 4·[R = 2] + 1)·r + 3.
    Rotating the ring rotates the rows. Missing slots are zeros, as the networks see them; what the ridge leaves
    out is the exact scan times (view_dt), the embeddings beyond their top r directions, the other views one by
    one, and anything nonlinear.

    Why the ring means: every network sees every view. At 5 minutes a view's own sky has mostly moved on (the
    sky row sees a ring 0.4–1.6 × the cloud-base height around the node), and the mean of all 16 views' true
    cloud fractions forecasts a view better than the view itself (stage2_forecast.ceilings: MAE 0.050 against
    0.063 on `make compare`'s test split). A ridge without them left that linear gain to the networks.

    Memory and time (why a projection): the ridge holds one F × F Gram matrix and its eigenvectors in float64,
    2·8·F² bytes, and decomposes it once per horizon. On `make compare`'s sky (resnet10t, pooled D = 1,024, both
    rows, K = 5) all D would give F = 12,291: 2.4 GB and ~14 min per horizon for the eigendecomposition (cubic
    in F: 7.4 s measured at F = 2,563 on 2 shared cores); its 2×2 grids (D = 4,096) 39 GB. With r = 256
    (baselines.RIDGE_RANK) F = 3,075: 0.15 GB on pooled features and on grids alike (the whole-context ridge it
    replaces needed ~19 GB on grids).

    With the cloud motion in the batch (`motion`), the row also gets its own view's `project_motion` features
    per slot (along, across, flag: 3·K) and, so that a linear model can let the motion pick where the future
    comes from, the rectified anchor-scan components (outward, inward, clockwise, anticlockwise parts) times the
    first MOTION_RANK coordinates (the top principal ones when a basis is given) of the view itself, its two ring
    neighbours and, with a horizon row, the horizon view below, all at t: 4·(3 + [R = 2])·MOTION_RANK. On
    `make compare` F grows from 3,075 to 3,346 (0.18 GB). It still cannot scale a displacement by the horizon
    beyond its per-horizon coefficients, use motion × older slots or × further coordinates, or anything else
    nonlinear.
    """
    view_x = batch["view_x"] if basis is None else batch["view_x"] @ basis
    B, R, P, K, D = view_x.shape
    cols = torch.arange(P)
    angle = 2 * np.pi * batch["solar_hour"] / 24.0
    clock = torch.stack([angle.sin(), angle.cos(), batch["sun_elev"] / 90.0], dim=-1)  # as models.Encodings
    parts = [view_x[:, 0].flatten(2), view_x[:, 0, (cols - 1) % P, 0], view_x[:, 0, (cols + 1) % P, 0]]
    if R > 1:
        parts += [view_x[:, 1, (cols + s) % P, 0] for s in (-1, 0, 1)]
    present = batch["view_mask"][:, :, :, 0, None].to(view_x.dtype)  # (B, R, P, 1)
    ring = (view_x[:, :, :, 0] * present).sum(2) / present.sum(2).clamp(min=1.0)  # (B, R, D): each row's mean at t
    parts += [ring[:, r, None].expand(B, P, -1) for r in range(R)]
    parts.append(clock[:, None].expand(B, P, 3).to(view_x.dtype))
    if "motion" in batch:
        motion = project_motion(batch["motion"], batch["motion_mask"]).to(view_x.dtype)  # (B, P, K, 3)
        now = view_x[:, 0, :, 0, :MOTION_RANK]
        seen = [now, now[:, (cols - 1) % P], now[:, (cols + 1) % P]] + ([view_x[:, 1, :, 0, :MOTION_RANK]] if R > 1
                                                                        else [])
        along, across = motion[:, :, 0, 0, None], motion[:, :, 0, 1, None]  # the anchor scan's, (B, P, 1)
        rectified = [along.clamp(min=0), (-along).clamp(min=0), across.clamp(min=0), (-across).clamp(min=0)]
        parts += [motion.flatten(2)] + [r * x for r in rectified for x in seen]
    return torch.cat(parts, dim=-1)


def targets(table: ScanTable, win: Windows, idx: np.ndarray | None = None, *,
            day_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """gather's tgt_z (B,H,P,D) and tgt_mask (B,H,P) alone (all of `win` when idx is None): what a whole split's
    targets cost, without the context and climatology a batch also carries (a 40-day train split's are GBs)."""
    idx = np.arange(len(win)) if idx is None else idx
    a, g = win.anchor[idx], win.tgt[idx]
    mask = table.present[g] & table.present[a][:, None] & (table.is_day[g] if day_only else True)
    return table.z[g], mask


def gather(table: ScanTable, win: Windows, idx: np.ndarray, *, day_only: bool = True, clim: np.ndarray | None = None,
           images: bool = False, target_images: bool = False, base: np.ndarray | None = None,
           means_min: tuple[float, ...] | None = (30.0, 60.0)) -> dict[str, torch.Tensor]:
    """One batch: context (B,T,P,D) + mask, targets (B,H,P,D) + mask, conditioning, optional images.

    With `means_min` (None: left out, for whole-split batches of the embedding baselines), the batch also holds
    the view context of `view_context`: view_x (B,R,P,K,D), view_mask (B,R,P,K) and view_dt (B,K), each slot's
    time offset in minutes (a mean's: minus half its window); with a motion table joined (`join_motion`) also
    motion (B,K,2) m/s (east, north) and motion_mask (B,K) of `motion_context`.

    With `clim` (P, 24, D), the train diurnal climatology (baselines.fit_climatology), the batch also holds
    clim_now (B,P,D) at the anchor's solar hour and clim_tgt (B,H,P,D) at each target scan's solar hour.
    With `base` (N, H, P, D) for all of `win` (baselines.ridge_start), the batch holds base (B,H,P,D): the
    forecast a residual_base=ridge model adds its output to.
    """
    a, c, g = win.anchor[idx], win.ctx[idx], win.tgt[idx]
    t = table.time_ns
    tgt_z, tgt_mask = targets(table, win, idx, day_only=day_only)
    batch = {
        "ctx_z": torch.from_numpy(table.z[c]),
        "ctx_mask": torch.from_numpy(table.present[c]),
        "ctx_dt": torch.from_numpy(np.where(c >= 0, (t[c] - t[a][:, None]) / 60e9, 0.0).astype(np.float32)),
        "sun_elev": torch.from_numpy(table.sun_elev[a]),
        "solar_hour": torch.from_numpy(table.solar_hour[a]),
        "tgt_z": torch.from_numpy(tgt_z),
        "tgt_mask": torch.from_numpy(tgt_mask),
    }
    if means_min is not None:
        x, m = view_context(table, a, c, means_min)
        batch["view_x"], batch["view_mask"] = torch.from_numpy(x), torch.from_numpy(m)
        mean_dt = np.broadcast_to(-np.asarray(means_min, np.float32) / 2, (len(a), len(means_min)))
        batch["view_dt"] = torch.from_numpy(np.concatenate([batch["ctx_dt"].numpy(), mean_dt], axis=1))
        if table.motion is not None:
            uv, has = motion_context(table, a, c, means_min)
            batch["motion"], batch["motion_mask"] = torch.from_numpy(uv), torch.from_numpy(has)
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
