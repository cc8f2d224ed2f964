"""Evaluate stage-1 embeddings: collapse checks, cross-modal retrieval, cloud-fraction probes, vs random init.

    sagecast-stage1-evaluate --run runs/stage1 [--rows day|all]

Reads RUN/embeddings.parquet (from `stage1_jea.export`) and the prepared index it names. Writes
RUN/metrics.json, RUN/probe_cloud_fraction.json (the ridge probe stage 2 applies to forecast embeddings) and
RUN/embeddings_2d.png. Cross-modal retrieval runs in projector space (the trained projectors from RUN/ckpt.pt
applied to the exported features): two separate backbones' features share no coordinates. Every number is
also computed for randomly initialised encoders and projectors of the same architectures (the floor).
Probes are fitted on train, ridge alpha chosen on val, scored on test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import Subset

from sagecast_common.cli import make_parser, require, run_cli
from sagecast_common.encoders import build_encoder
from sagecast_common.linalg import rankme, ridge_on_val
from sagecast_common.runio import atomic_write_json
from stage1_jea.export import extract_features
from stage1_jea.model import projector
from stage1_jea.plots import plot_embeddings_2d

KEYS = ["vsn", "timestamp", "position"]


def collapse_stats(x: np.ndarray) -> dict:
    std = x.std(axis=0)
    return {"dim": int(x.shape[1]), "rankme": rankme(x), "std_mean": float(std.mean()),
            "std_min": float(std.min()), "dead_dims_frac": float((std < 1e-4 * max(std.max(), 1e-12)).mean())}


def retrieval(query: np.ndarray, keys: np.ndarray, ks=(1, 5)) -> dict:
    """Row i of `query` should find row i of `keys` (cosine); top-k accuracy."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    sim = q @ k.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)  # how many keys beat the true partner
    return {f"top{n}": float((rank < n).mean()) for n in ks}


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))


def probes(x: dict[str, np.ndarray], y: dict[str, np.ndarray], k: int = 10) -> dict:
    """Ridge (alpha picked on val) and cosine kNN probes, fitted on train, R² on test."""
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    xs = {s: (v - mean) / std for s, v in x.items()}
    alpha, (xm, ym, coef) = ridge_on_val(xs["train"], y["train"], xs["val"], y["val"])
    intercept = float(ym - xm @ coef)
    unit = {s: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for s, v in xs.items()}
    nearest = np.argsort(-(unit["test"] @ unit["train"].T), axis=1)[:, :k]
    return {"ridge_test_r2": r2(y["test"], xs["test"] @ coef + intercept), "ridge_alpha": alpha,
            "knn_test_r2": r2(y["test"], y["train"][nearest].mean(axis=1)), "knn_k": k,
            "_probe": {"feature_mean": mean, "feature_std": std, "coef": coef, "intercept": intercept}}


@torch.no_grad()
def project(emb: dict[str, np.ndarray], projectors: dict[str, torch.nn.Module]) -> dict[str, np.ndarray]:
    """Projector outputs of backbone features: the space where VICReg's invariance term aligns the branches."""
    return {b: projectors[b].eval()(torch.from_numpy(x).float()).numpy() for b, x in emb.items()}


def _projectors(run: Path, dims: dict[str, int], *, trained: bool, seed: int) -> dict[str, torch.nn.Module]:
    config = json.loads((run / "config.json").read_text())
    torch.manual_seed(seed)
    heads = {b: projector(d, config["projector"]) for b, d in dims.items()}
    if trained:
        state = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
        for b, head in heads.items():
            head.load_state_dict({k.removeprefix(f"proj_{b}."): v for k, v in state.items()
                                  if k.startswith(f"proj_{b}.")})
    return heads


def evaluate_features(emb: dict[str, np.ndarray], z: dict[str, np.ndarray], rows: pd.DataFrame) -> dict:
    split = rows["split"].to_numpy()
    test = split == "test"
    x = np.concatenate([emb["rgb"], emb["thermal"]], axis=1)
    targets = {"cloud_fraction": rows["cloud_fraction"].to_numpy(np.float64)}
    if "true_cloud_fraction" in rows:
        targets["true_cloud_fraction"] = rows["true_cloud_fraction"].to_numpy(np.float64)
    return {
        "rgb": collapse_stats(emb["rgb"]), "thermal": collapse_stats(emb["thermal"]),
        "retrieval": {"n_test": int(test.sum()), "chance_top1": 1 / test.sum(), "chance_top5": 5 / test.sum(),
                      "space": "projector outputs (cosine)",
                      "rgb_to_thermal": retrieval(z["rgb"][test], z["thermal"][test]),
                      "thermal_to_rgb": retrieval(z["thermal"][test], z["rgb"][test])},
        "probes": {name: probes({s: x[split == s] for s in ("train", "val", "test")},
                                {s: y[split == s] for s in ("train", "val", "test")})
                   for name, y in targets.items()},
    }


def _read_embeddings(run: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    info = json.loads((run / "embeddings.json").read_text())
    table = pq.read_table(run / "embeddings.parquet")
    emb = {b: table.column(f"emb_{b}").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
           for b in ("rgb", "thermal")}
    return table.drop(["emb_rgb", "emb_thermal"]).to_pandas(), emb, info


def _random_init_features(run: Path, prepared: Path, rows: pd.DataFrame, *, seed: int,
                          batch_size: int) -> dict[str, np.ndarray]:
    from data import PairedSkyDataset

    specs = torch.load(run / "encoders.pt", map_location="cpu", weights_only=True)["meta"]["specs"]
    torch.manual_seed(seed)
    encoders = {b: build_encoder(s["arch"], in_chans=s["in_chans"], kwargs=s["kwargs"]) for b, s in specs.items()}
    dataset = PairedSkyDataset(prepared, None, augment=False, day_only=False)
    where = dataset.index.reset_index(drop=True).reset_index().merge(rows[KEYS], on=KEYS, how="right")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return extract_features(encoders, Subset(dataset, where["index"].tolist()), batch_size=batch_size,
                            device=device, desc="random-init features")


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


def evaluate(run: str | Path, *, rows: str = "day", batch_size: int = 256, seed: int = 0) -> dict:
    run = Path(run)
    table, emb, info = _read_embeddings(run)
    prepared = Path(info["prepared_dir"])
    index = pd.read_parquet(prepared / "index.parquet")
    table = table.merge(index[KEYS + ["cloud_fraction", "lon"]], on=KEYS, how="left", validate="one_to_one")
    truth = _true_cloud_fraction(prepared, table)
    if truth is not None:
        table["true_cloud_fraction"] = truth.to_numpy()
    keep = (table["is_day"].to_numpy(bool) if rows == "day" else np.ones(len(table), bool)) & \
        table["cloud_fraction"].notna().to_numpy()
    sel = table[keep].reset_index(drop=True)
    emb = {b: v[keep] for b, v in emb.items()}
    missing = [s for s in ("train", "val", "test") if not (sel["split"] == s).any()]
    if missing:
        raise SystemExit(f"no {rows} rows in split(s) {missing} of {prepared}: cannot fit/score probes")
    dims = {b: x.shape[1] for b, x in emb.items()}
    trained = evaluate_features(emb, project(emb, _projectors(run, dims, trained=True, seed=seed)), sel)
    emb_random = _random_init_features(run, prepared, sel, seed=seed, batch_size=batch_size)
    floor = evaluate_features(emb_random, project(emb_random, _projectors(run, dims, trained=False, seed=seed)), sel)
    probe = trained["probes"]["cloud_fraction"].pop("_probe")
    for result in (trained, floor):
        for p in result["probes"].values():
            p.pop("_probe", None)
    atomic_write_json(run / "probe_cloud_fraction.json", {
        "features": "concat(emb_rgb, emb_thermal)", "feature_mean": probe["feature_mean"].tolist(),
        "feature_std": probe["feature_std"].tolist(), "coef": probe["coef"].tolist(),
        "intercept": probe["intercept"], "test_r2": trained["probes"]["cloud_fraction"]["ridge_test_r2"],
        "alpha": trained["probes"]["cloud_fraction"]["ridge_alpha"], "rows": rows})
    metrics = {"rows": rows, "n": sel["split"].value_counts().to_dict(), "checkpoint_sha256": info["checkpoint_sha256"],
               "embedding": "backbone features (not projector)", "trained": trained, "random_init": floor}
    atomic_write_json(run / "metrics.json", metrics)
    ts = pd.to_datetime(sel["timestamp"], utc=True)
    solar_hour = ((ts.dt.hour + ts.dt.minute / 60 + sel["lon"].to_numpy() / 15) % 24).to_numpy()
    plot_embeddings_2d(emb, sel["cloud_fraction"].to_numpy(), solar_hour, run / "embeddings_2d.png")
    r, f = trained["retrieval"], floor["retrieval"]
    print(f"retrieval top-5 rgb->thermal {r['rgb_to_thermal']['top5']:.3f} thermal->rgb "
          f"{r['thermal_to_rgb']['top5']:.3f} (random init {f['rgb_to_thermal']['top5']:.3f}/"
          f"{f['thermal_to_rgb']['top5']:.3f}, chance {r['chance_top5']:.4f}, n={r['n_test']}); cloud-fraction "
          f"ridge R² {trained['probes']['cloud_fraction']['ridge_test_r2']:.3f} "
          f"(random init {floor['probes']['cloud_fraction']['ridge_test_r2']:.3f}); wrote {run / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-stage1-evaluate", __doc__)
    ap.add_argument("--run", required=True, help="stage-1 run dir (with embeddings.parquet)")
    ap.add_argument("--rows", choices=("day", "all"), default="day",
                    help="rows to evaluate: daytime only (as trained) or all")
    ap.add_argument("--batch-size", type=int, default=256, help="for the random-init features")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init encoders")
    args = ap.parse_args(argv)

    def run() -> None:
        require(Path(args.run) / "embeddings.parquet", what="stage-1 embeddings",
                made_by=f"sagecast-stage1-export --run {args.run}")
        evaluate(args.run, rows=args.rows, batch_size=args.batch_size, seed=args.seed)

    run_cli(run, prog=ap.prog)


if __name__ == "__main__":
    main()
