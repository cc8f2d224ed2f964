"""Evaluate stage-1 embeddings against fair baselines: collapse, cross-modal retrieval, cloud-fraction probes.

    sagecast-stage1-evaluate --run runs/stage1 [--rows day|all] [--every N]

Reads RUN/embeddings.parquet (from `stage1_jea.export`) and the prepared dir it names. Writes RUN/metrics.json,
RUN/embeddings_2d.png, the two files the HTML report (`sagecast_report`) draws stage 1 from -
RUN/features_pca.parquet (2-D PCA of trained and random-init backbone features of up to 600 daytime frames) and
RUN/retrieval_examples.json (RGB queries of the test split and their top-3 thermal matches in projector space) -
and, last, RUN/probe_cloud_fraction.json (the ridge probe stage 2 applies to forecast embeddings; its existence
means the evaluation finished). Three feature sets get the same measurements (`metrics.json` keys):
  trained      the exported backbone features
  random_init  randomly initialised encoders of the same architectures
  raw_pixels   the prepared frames area-averaged to 8×8 per modality (`stage1_jea.baselines.raw_pixels`)
Retrieval for all three: a regularised CCA fitted on train aligns the RGB and thermal features (reg and
width picked on val), top-1/5 by cosine on test. The trained run is also scored in its own projector space
(`retrieval_projector`). Probes (ridge, alpha picked on val; cosine kNN), fitted on train, R² on test: whole
frame cloud fraction from the pooled features, and the layout probe - cloud fraction per region of a 2×2 grid
of the thermal frame (data.sky's rule) - from the grid features (raw pixels: the 8×8 frames).
--every N keeps every N-th capture of each (node, preset) in time order, for all three feature sets alike: the
random-init forward pass and the raw-pixel reads dominate the cost on long datasets (`make compare` uses 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Subset

from sagecast_common.bootstrap import day_labels, interval, replicate_totals, totals_by_day
from sagecast_common.cli import UserError, make_parser, read_json, require, run_cli
from sagecast_common.encoders import build_encoder
from sagecast_common.linalg import rankme, ridge_on_val
from sagecast_common.plots import pca_2d
from sagecast_common.runio import atomic_path, atomic_write_json
from stage1_jea.baselines import aligned_retrieval, raw_pixels, region_cloud_fraction, retrieval
from stage1_jea.export import extract_features
from stage1_jea.model import projector
from stage1_jea.plots import plot_embeddings_2d

KEYS = ["vsn", "timestamp", "position"]
PCA_ROWS = 600  # daytime frames in features_pca.parquet (evenly spaced over the rows: fixed, no RNG)
RETRIEVAL_EXAMPLES = 3


def collapse_stats(x: np.ndarray) -> dict:
    std = x.std(axis=0)
    return {"dim": int(x.shape[1]), "rankme": rankme(x), "std_mean": float(std.mean()),
            "std_min": float(std.min()), "dead_dims_frac": float((std < 1e-4 * max(std.max(), 1e-12)).mean())}


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² (for (N, T) targets: pooled over the T outputs, each around its own mean)."""
    return float(1 - ((y - pred) ** 2).sum() / max(((y - y.mean(axis=0)) ** 2).sum(), 1e-12))


def r2_interval(y: np.ndarray, pred: np.ndarray, days: np.ndarray, *, n_boot: int = 1000) -> list[float]:
    """95 % interval of `r2` from resampling the test rows by whole days (the fitted probe stays fixed)."""
    y2, p2 = y.reshape(len(y), -1), pred.reshape(len(y), -1)
    index, n_days = day_labels(days)
    parts = {"sse": ((y2 - p2) ** 2).sum(1, keepdims=True), "n": np.ones((len(y2), 1)), "sy": y2, "syy": y2**2}
    _, reps = replicate_totals({k: totals_by_day(v, index, n_days)[None] for k, v in parts.items()}, n_boot=n_boot)
    sst = (reps["syy"] - reps["sy"] ** 2 / reps["n"]).sum(1)
    return interval(1 - reps["sse"][:, 0] / np.maximum(sst, 1e-12)).tolist()


def probes(x: dict[str, np.ndarray], y: dict[str, np.ndarray], k: int = 10, *,
           test_days: np.ndarray | None = None) -> dict:
    """Ridge (alpha picked on val) and cosine kNN probes, fitted on train, R² on test (with day-bootstrap
    intervals `*_ci` when `test_days` labels the test rows)."""
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    xs = {s: (v - mean) / std for s, v in x.items()}
    alpha, (xm, ym, coef) = ridge_on_val(xs["train"], y["train"], xs["val"], y["val"])
    intercept = ym - xm @ coef  # (T,) for several targets (the layout probe), a scalar for one
    unit = {s: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for s, v in xs.items()}
    nearest = np.argsort(-(unit["test"] @ unit["train"].T), axis=1)[:, :k]
    ridge, knn = xs["test"] @ coef + intercept, y["train"][nearest].mean(axis=1)
    out = {"ridge_test_r2": r2(y["test"], ridge), "ridge_alpha": alpha, "knn_test_r2": r2(y["test"], knn), "knn_k": k,
           "_probe": {"feature_mean": mean, "feature_std": std, "coef": coef, "intercept": intercept}}
    if test_days is not None:
        out["ridge_test_r2_ci"] = r2_interval(y["test"], ridge, test_days)
        out["knn_test_r2_ci"] = r2_interval(y["test"], knn, test_days)
    return out


@torch.no_grad()
def project(emb: dict[str, np.ndarray], projectors: dict[str, torch.nn.Module]) -> dict[str, np.ndarray]:
    """Projector outputs of backbone features: the space where VICReg's invariance term aligns the branches."""
    return {b: projectors[b].eval()(torch.from_numpy(x).float()).numpy() for b, x in emb.items()}


def _trained_projectors(run: Path, dims: dict[str, int]) -> dict[str, torch.nn.Module]:
    config = read_json(run / "config.json", made_by=f"sagecast-stage1-train run_dir={run}", what="stage-1 config")
    heads = {b: projector(d, config["projector"]) for b, d in dims.items()}
    state = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
    for b, head in heads.items():
        head.load_state_dict({k.removeprefix(f"proj_{b}."): v for k, v in state.items() if k.startswith(f"proj_{b}.")})
    return heads


def evaluate_features(feats: dict[str, np.ndarray], rows: pd.DataFrame, targets: dict[str, np.ndarray]) -> dict:
    """Collapse stats, CCA-aligned retrieval (pooled "rgb"/"thermal"), whole-frame probes on the pooled
    features and the layout probe (`targets["layout"]`) on the grid features."""
    split = rows["split"].to_numpy()
    by_split = {b: {s: v[split == s] for s in ("train", "val", "test")} for b, v in feats.items()}
    n_test = int((split == "test").sum())
    test_days = test_day_labels(rows[split == "test"])
    pooled = np.concatenate([feats["rgb"], feats["thermal"]], axis=1)
    grid = np.concatenate([feats["grid_rgb"], feats["grid_thermal"]], axis=1)
    return {
        "rgb": collapse_stats(feats["rgb"]), "thermal": collapse_stats(feats["thermal"]),
        "retrieval": {"n_test": n_test, "chance_top1": 1 / n_test, "chance_top5": 5 / n_test,
                      "test_days": int(len(set(test_days))),
                      **aligned_retrieval(by_split["rgb"], by_split["thermal"], test_days=test_days)},
        "probes": {name: probes({s: (grid if name == "layout" else pooled)[split == s] for s in by_split["rgb"]},
                                {s: y[split == s] for s in by_split["rgb"]}, test_days=test_days)
                   for name, y in targets.items()},
    }


def test_day_labels(rows: pd.DataFrame) -> np.ndarray:
    """The day each row belongs to: node and local date (the unit splits are made of and intervals resample)."""
    return (rows["vsn"].astype(str) + "/" + rows["local_date"].astype(str)).to_numpy()


def _read_embeddings(run: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    try:
        info = json.loads((run / "embeddings.json").read_text())
        table = pq.read_table(run / "embeddings.parquet")
    except (pa.ArrowException, OSError, ValueError) as e:  # truncated, foreign or absent
        raise UserError(f"{run}: unreadable embeddings ({e}): rerun `sagecast-stage1-export --run {run}`") from None
    columns = {"rgb": "emb_rgb", "thermal": "emb_thermal", "grid_rgb": "grid_rgb", "grid_thermal": "grid_thermal"}
    if "grid_rgb" not in table.column_names:
        raise UserError(f"{run / 'embeddings.parquet'} has no grid columns: rerun `sagecast-stage1-export --run {run}`")
    feats = {k: table.column(c).combine_chunks().flatten().to_numpy().reshape(len(table), -1)
             for k, c in columns.items()}
    return table.drop(list(columns.values())).to_pandas(), feats, info


def _random_init_features(run: Path, prepared: Path, rows: pd.DataFrame, *, seed: int, batch_size: int,
                          grid: int) -> dict[str, np.ndarray]:
    from data import PairedSkyDataset

    specs = torch.load(run / "encoders.pt", map_location="cpu", weights_only=True)["meta"]["specs"]
    torch.manual_seed(seed)
    encoders = {b: build_encoder(s["arch"], in_chans=s["in_chans"], kwargs=s["kwargs"]) for b, s in specs.items()}
    dataset = PairedSkyDataset(prepared, None, augment=False, day_only=False)
    where = dataset.index.reset_index(drop=True).reset_index().merge(rows[KEYS], on=KEYS, how="right")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return extract_features(encoders, Subset(dataset, where["index"].tolist()), batch_size=batch_size,
                            device=device, desc="random-init features", grid=grid)


def _true_cloud_fraction(prepared: Path, table: pd.DataFrame) -> pd.Series | None:
    """Synthetic data only: the generator's cloud fraction per capture, from RAW/<VSN>/truth.parquet."""
    report = prepared / "report.json"
    raw = Path(json.loads(report.read_text()).get("raw", "")) if report.exists() else None
    files = [raw / vsn / "truth.parquet" for vsn in table["vsn"].unique()] if raw else []
    if not files or not all(f.exists() for f in files):
        return None
    truth = pd.concat([pd.read_parquet(f, columns=KEYS + ["cloud_fraction"]) for f in files])
    truth["timestamp"] = truth["timestamp"].astype(table["timestamp"].dtype)
    merged = table[KEYS].merge(truth, on=KEYS, how="left", validate="many_to_one")
    return merged["cloud_fraction"] if merged["cloud_fraction"].notna().all() else None


def thin(table: pd.DataFrame, every: int) -> np.ndarray:
    """Mask keeping every `every`-th row of each (vsn, position) in timestamp order (the first one included)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    order = table.sort_values(["vsn", "position", "timestamp"], kind="stable")
    rank = order.groupby(["vsn", "position"], sort=False).cumcount().reindex(table.index)
    return (rank.to_numpy() % every) == 0


def even_subsample(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int)) if n else np.zeros(0, int)


def pca_table(sel: pd.DataFrame, solar_hour: np.ndarray, sets: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """features_pca.parquet: per feature set and branch, the first two principal components of the backbone
    features of PCA_ROWS daytime rows (the same rows for every set), with their keys and local solar hour."""
    day = np.flatnonzero(sel["is_day"].to_numpy(bool))
    pick = day[even_subsample(len(day), PCA_ROWS)]
    keys = sel.iloc[pick][KEYS].reset_index(drop=True).assign(solar_hour=solar_hour[pick])
    parts = []
    for name, feats in sets.items():
        for branch in ("rgb", "thermal"):
            xy = pca_2d(feats[branch][pick].astype(np.float64))
            parts.append(keys.assign(features=name, branch=branch, pc1=xy[:, 0], pc2=xy[:, 1]))
    return pd.concat(parts, ignore_index=True)


def retrieval_examples(rows: pd.DataFrame, z: dict[str, np.ndarray]) -> dict:
    """retrieval_examples.json: RETRIEVAL_EXAMPLES RGB queries spread evenly over `rows` (the test pool) with the
    cosine of their true thermal pair, its rank, and the top-3 thermal matches (row i's true key is row i)."""
    unit = {b: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for b, v in z.items()}
    sim = unit["rgb"] @ unit["thermal"].T  # (Q, K)

    def frame(i: int) -> dict:
        r = rows.iloc[i]
        return {"vsn": str(r["vsn"]), "timestamp": pd.Timestamp(r["timestamp"]).isoformat(),
                "position": int(r["position"]), "row": int(r["row"])}

    examples = []
    for q in even_subsample(len(rows), RETRIEVAL_EXAMPLES + 2)[1:-1]:
        top = np.argsort(-sim[q], kind="stable")[:3]
        examples.append({"query": frame(q), "true_cos": float(sim[q, q]), "rank": int((sim[q] > sim[q, q]).sum()) + 1,
                         "matches": [{**frame(k), "cos": float(sim[q, k]), "true_pair": bool(k == q)} for k in top]})
    return {"space": "trained projector outputs (cosine)", "split": "test", "n_pool": len(rows),
            "examples": examples}


def evaluate(run: str | Path, *, rows: str = "day", batch_size: int = 256, seed: int = 0, every: int = 1,
             real_data: bool = False) -> dict:
    run = Path(run)
    table, feats, info = _read_embeddings(run)
    prepared = Path(info["prepared_dir"])
    index = pd.read_parquet(prepared / "index.parquet")
    table = table.merge(index[KEYS + ["cloud_fraction", "lon", "row", "local_date"]], on=KEYS, how="left",
                        validate="one_to_one")
    truth = None if real_data else _true_cloud_fraction(prepared, table)  # a real sky has no generator truth
    if truth is not None:
        table["true_cloud_fraction"] = truth.to_numpy()
    keep = (table["is_day"].to_numpy(bool) if rows == "day" else np.ones(len(table), bool)) & \
        table["cloud_fraction"].notna().to_numpy()
    keep &= thin(table, every)
    sel = table[keep].reset_index(drop=True)
    feats = {b: v[keep] for b, v in feats.items()}
    missing = [s for s in ("train", "val", "test") if not (sel["split"] == s).any()]
    if missing:
        raise UserError(f"no {rows} rows in split(s) {missing} of {prepared}: cannot fit/score probes")
    targets = {"cloud_fraction": sel["cloud_fraction"].to_numpy(np.float64)}
    if "true_cloud_fraction" in sel:
        targets["true_cloud_fraction"] = sel["true_cloud_fraction"].to_numpy(np.float64)
    g = info["grid"]["g"]
    targets["layout"] = region_cloud_fraction(prepared, sel["row"].to_numpy(), grid=g,
                                              positions=sel["position"].to_numpy())
    pixels = raw_pixels(prepared, sel["row"].to_numpy(), size=8)
    sets = {"trained": feats,
            "random_init": _random_init_features(run, prepared, sel, seed=seed, batch_size=batch_size, grid=g),
            "raw_pixels": {**pixels, "grid_rgb": pixels["rgb"], "grid_thermal": pixels["thermal"]}}
    results = {name: evaluate_features(f, sel, targets) for name, f in sets.items()}
    test = (sel["split"] == "test").to_numpy()
    z = project({b: feats[b] for b in ("rgb", "thermal")}, _trained_projectors(run, {b: feats[b].shape[1]
                                                                                        for b in ("rgb", "thermal")}))
    results["trained"]["retrieval_projector"] = {
        "space": "trained projector outputs (cosine)",
        "rgb_to_thermal": retrieval(z["rgb"][test], z["thermal"][test], days=test_day_labels(sel[test])),
        "thermal_to_rgb": retrieval(z["thermal"][test], z["rgb"][test], days=test_day_labels(sel[test]))}
    cloud = results["trained"]["probes"]["cloud_fraction"]
    probe = cloud["_probe"]
    for result in results.values():
        for p in result["probes"].values():
            p.pop("_probe", None)
    metrics = {"rows": rows, "every": every, "n": sel["split"].value_counts().to_dict(),
               "checkpoint_sha256": info["checkpoint_sha256"], "random_init_seed": seed,
               "embedding": "backbone features (not projector)",
               "layout_target": f"cloud fraction per cell of a {g}x{g} grid of the prepared thermal frame "
                                "(data.sky.cloud_mask), row-major", **results}
    atomic_write_json(run / "metrics.json", metrics)
    ts = pd.to_datetime(sel["timestamp"], utc=True)
    solar_hour = ((ts.dt.hour + ts.dt.minute / 60 + sel["lon"].to_numpy() / 15) % 24).to_numpy()
    plot_embeddings_2d({b: feats[b] for b in ("rgb", "thermal")}, sel["cloud_fraction"].to_numpy(), solar_hour,
                       run / "embeddings_2d.png")
    with atomic_path(run / "features_pca.parquet") as tmp:
        pca_table(sel, solar_hour, {k: sets[k] for k in ("trained", "random_init")}).to_parquet(tmp, index=False)
    atomic_write_json(run / "retrieval_examples.json",
                      retrieval_examples(sel[test].reset_index(drop=True), {b: v[test] for b, v in z.items()}))
    atomic_write_json(run / "probe_cloud_fraction.json", {  # last: the completion record of this step
        "features": "concat(emb_rgb, emb_thermal)", "feature_mean": probe["feature_mean"].tolist(),
        "feature_std": probe["feature_std"].tolist(), "coef": probe["coef"].tolist(),
        "intercept": float(probe["intercept"]), "test_r2": cloud["ridge_test_r2"], "alpha": cloud["ridge_alpha"],
        "rows": rows, "every": every})
    print(f"test n={results['trained']['retrieval']['n_test']}, chance top-5 "
          f"{results['trained']['retrieval']['chance_top5']:.4f}; CCA-aligned top-5 rgb->thermal/thermal->rgb, "
          "cloud-fraction R², layout R²:")
    for name, r in results.items():
        ret, pr = r["retrieval"], r["probes"]
        print(f"  {name:12s} {ret['rgb_to_thermal']['top5']:.3f}/{ret['thermal_to_rgb']['top5']:.3f}  "
              f"{pr['cloud_fraction']['ridge_test_r2']:.3f}  {pr['layout']['ridge_test_r2']:.3f}")
    rp = results["trained"]["retrieval_projector"]
    print(f"  trained, projector space: {rp['rgb_to_thermal']['top5']:.3f}/{rp['thermal_to_rgb']['top5']:.3f}; "
          f"wrote {run / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-stage1-evaluate", __doc__)
    ap.add_argument("--run", required=True, help="stage-1 run dir (with embeddings.parquet)")
    ap.add_argument("--rows", choices=("day", "all"), default="day",
                    help="rows to evaluate: daytime only (as trained) or all")
    ap.add_argument("--batch-size", type=int, default=256, help="for the random-init features")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init encoders")
    ap.add_argument("--real-data", action="store_true",
                    help="the data is a real sky: read no synthetic truth (RAW/<VSN>/truth.parquet) even if present")
    ap.add_argument("--every", type=int, default=1,
                    help="keep every N-th capture of each (node, preset) in time order (default: all)")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")

    def run() -> None:
        require(Path(args.run) / "embeddings.parquet", what="stage-1 embeddings",
                made_by=f"sagecast-stage1-export --run {args.run}")
        evaluate(args.run, rows=args.rows, batch_size=args.batch_size, seed=args.seed, every=args.every,
                 real_data=args.real_data)

    run_cli(run, prog=ap.prog)


if __name__ == "__main__":
    main()
