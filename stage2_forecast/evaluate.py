"""Stage-2 evaluation on the test split: trained forecasters vs persistence, climatology and ridge.

    sagecast-stage2-evaluate --stage1-run runs/stage1 --runs runs/stage2/detr runs/stage2/jepa \
        --out runs/stage2

Everything is scored in the same space (stage-1 embeddings standardised with train statistics) on the same
slots: (sample, horizon, preset) with a daytime target whose preset was also seen at t. Per method and
horizon: MSE, cosine, skill = 1 - MSE/MSE_persistence, top-1/top-5 retrieval of the true future among all
captures of that preset on the same day, cloud-fraction MAE of the stage-1 probe applied to the forecast (vs
the prepared index's measured cloud_fraction) and its skill vs persistence; the same for clear and cloudy
days. Writes OUT/report.json, OUT/report.md and OUT/skill_vs_horizon.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sagecast_common.cli import make_parser, run_cli
from sagecast_common.linalg import rankme, ridge_fit, ridge_predict
from sagecast_common.runio import atomic_write_json, atomic_write_text
from stage2_forecast import samples
from stage2_forecast.plots import plot_skill
from stage2_forecast.train import Config, load_run, needs_images

# A day is "cloudy" when its mean daytime cloud_fraction (prepared index) is at least 3/8 (≥ 3 oktas).
CLOUDY_DAY_FRACTION = 0.375
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def retrieval_ranks(pred, table: samples.ScanTable, win: samples.Windows, mask, *, day_only=True) -> np.ndarray:
    """(N, H, P) number of same-day same-preset candidates strictly closer to the forecast than the truth."""
    ranks = np.full(mask.shape, -1, np.int64)
    scans = np.arange(len(table.time_ns) - 1)  # every real scan (not the masked sentinel)
    for p in range(mask.shape[2]):
        ok = table.present[scans, p] & (table.is_day[scans, p] if day_only else True)
        for day in np.unique(table.day[win.tgt][mask[:, :, p]]):
            cand = table.z[scans[ok & (table.day[scans] == day)], p]  # (C, D)
            n, h = np.nonzero(mask[:, :, p] & (table.day[win.tgt] == day))
            d = ((pred[n, h, p, None] - cand[None]) ** 2).sum(-1)  # (M, C)
            d_true = ((pred[n, h, p] - table.z[win.tgt[n, h], p]) ** 2).sum(-1)
            ranks[n, h, p] = (d < d_true[:, None] - 1e-9).sum(1)
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


def climatology(table: samples.ScanTable, win: samples.Windows, *, day_only=True) -> np.ndarray:
    """Train-split mean standardised embedding by (preset, solar hour of the target scan), else by preset."""
    P, D = table.z.shape[1:]
    use = table.present & (table.split == "train")[:, None] & (table.is_day if day_only else True)
    hour = table.solar_hour.astype(np.int64) % 24
    mean_p = np.stack([table.z[use[:, p], p].mean(0) for p in range(P)])
    clim = np.repeat(mean_p[:, None], 24, axis=1)  # (P, 24, D)
    for p in range(P):
        for hr in np.unique(hour[use[:, p]]):
            clim[p, hr] = table.z[use[:, p] & (hour == hr), p].mean(0)
    return clim[np.arange(P)[None, None], hour[win.tgt][..., None]]  # (N, H, P, D)


def ridge(table, wins: dict, *, day_only=True) -> tuple[np.ndarray, dict]:
    """Ridge (sagecast_common.linalg) from the last scan (all presets) to the change at each (horizon, preset).

    The penalty alpha (relative to the mean squared feature norm) is chosen per horizon on the val split.
    """
    def design(win):
        b = samples.gather(table, win, np.arange(len(win)), day_only=day_only)
        x = b["ctx_z"][:, 0].flatten(1).double().numpy()
        return x, b["ctx_z"][:, 0].double().numpy(), b["tgt_z"].double().numpy(), b["tgt_mask"].numpy()

    (xtr, ztr, ytr, mtr), (xva, zva, yva, mva), (xte, zte, _, _) = (design(wins[s]) for s in ("train", "val", "test"))
    H, P = mtr.shape[1:]
    preds = {s: np.repeat(z[:, None], H, axis=1).copy() for s, z in (("val", zva), ("test", zte))}
    chosen = {}
    for h in range(H):
        fits = {}
        for p in range(P):
            r = mtr[:, h, p]
            if r.sum() < 2:
                continue
            x, y = xtr[r], ytr[r, h, p] - ztr[r, p]
            fits[p] = [ridge_fit(x, y, a) for a in RIDGE_ALPHAS]
        errors = [sum(((zva[:, p] + ridge_predict(fits[p][i], xva) - yva[:, h, p]) ** 2)
                      .mean(-1)[mva[:, h, p]].sum() for p in fits) for i in range(len(RIDGE_ALPHAS))]
        best = int(np.argmin(errors)) if len(wins["val"]) else 2
        chosen[h] = RIDGE_ALPHAS[best]
        for p, options in fits.items():
            preds["test"][:, h, p] = zte[:, p] + ridge_predict(options[best], xte)
    return preds["test"].astype(np.float32), chosen


@torch.no_grad()
def predict(model, cfg: Config, table, win, *, batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(win), batch_size):
        idx = np.arange(start, min(start + batch_size, len(win)))
        out.append(model(samples.gather(table, win, idx, day_only=cfg.day_only, images=needs_images(cfg))))
    return torch.cat(out).numpy()


def evaluate(stage1_run, runs, out_dir, *, base: Config | None = None) -> dict:
    loaded = [load_run(r) for r in runs]
    base = loaded[0][0] if loaded else (base or Config(stage1_run=str(stage1_run)))
    keys = ("features", "horizons_min", "scan_gap_s", "step_min", "tolerance_min", "day_only")
    for r, (cfg, _, _) in zip(runs, loaded, strict=True):
        if any(getattr(cfg, k) != getattr(base, k) for k in keys):
            raise ValueError(f"{r}: sample settings {[(k, getattr(cfg, k)) for k in keys]} differ from {runs[0]}")
    table = samples.load_scan_table(stage1_run, features=base.features, gap_s=base.scan_gap_s,
                                    prepared_dir=base.prepared)
    mean, std = samples.standardise(table, day_only=base.day_only)
    kw = dict(horizons_min=base.horizons_min, step_min=base.step_min, tolerance_min=base.tolerance_min,
              day_only=base.day_only)
    wins = {s: samples.build_windows(table, split=s, context_scans=base.context_scans, **kw)
            for s in ("train", "val", "test")}
    test = wins["test"]
    if len(test) == 0:
        raise ValueError(f"no test samples in {stage1_run}: does the test split have daytime scans?")
    b = samples.gather(table, test, np.arange(len(test)), day_only=base.day_only)
    true, mask = b["tgt_z"].numpy(), b["tgt_mask"].numpy()
    H = true.shape[1]
    preds = {"persistence": np.repeat(b["ctx_z"][:, None, 0].numpy(), H, axis=1), "climatology": climatology(
        table, test, day_only=base.day_only)}
    preds["ridge"], alphas = ridge(table, wins, day_only=base.day_only)
    for r, (cfg, model, run_mean) in zip(runs, loaded, strict=True):
        if run_mean.shape != mean.shape or not np.allclose(run_mean, mean, atol=1e-4):
            raise ValueError(f"{r} was trained on other embeddings than {stage1_run} (standardisation differs)")
        twin = samples.build_windows(table, split="test", context_scans=cfg.context_scans, **kw)
        preds[cfg.variant if cfg.variant not in preds else Path(r).name] = predict(model, cfg, table, twin)
    probe_path = Path(stage1_run) / "probe_cloud_fraction.json"
    probe = json.loads(probe_path.read_text()) if probe_path.exists() else None
    use_probe = probe is not None and len(probe["coef"]) == true.shape[-1]

    def cloud(pred):
        if not use_probe:
            return None
        raw = pred * std + mean
        return ((raw - np.array(probe["feature_mean"])) / np.array(probe["feature_std"])) @ np.array(probe["coef"]) \
            + probe["intercept"]

    cf_true = np.nan_to_num(table.cloud[test.tgt])  # (N, H, P) measured cloud_fraction of the target capture
    daytime = table.present & table.is_day
    day_cloud = {d: np.nanmean(table.cloud[table.day == d][daytime[table.day == d]])
                 for d in np.unique(table.day[test.anchor])}
    cloudy = np.array([day_cloud[d] >= CLOUDY_DAY_FRACTION for d in table.day[test.anchor]])
    hkeys = [f"{h:g}" for h in base.horizons_min]
    report = {"horizons_min": list(base.horizons_min), "n_test": len(test), "variants": {},
              "by_day_type": {}, "rankme": {}, "ridge_alpha": {hkeys[h]: a for h, a in alphas.items()},
              "cloudy_day_fraction_threshold": CLOUDY_DAY_FRACTION, "cloud_fraction_probe": use_probe,
              "n_test_days": {"clear": len({d for d, c in day_cloud.items() if c < CLOUDY_DAY_FRACTION}),
                              "cloudy": len({d for d, c in day_cloud.items() if c >= CLOUDY_DAY_FRACTION})}}
    for group, sel in (("all", np.ones(len(test), bool)), ("clear", ~cloudy), ("cloudy", cloudy)):
        if not sel.any():
            continue
        m = mask & sel[:, None, None]
        scored = {}
        for name, pred in preds.items():
            ranks = retrieval_ranks(pred, table, test, m, day_only=base.day_only)
            scored[name] = score(pred, true, m, ranks, cloud(pred), cf_true)
        per = {name: {hkeys[h]: v for h, v in with_skill(s, scored["persistence"]).items()}
               for name, s in scored.items()}
        if group == "all":
            report["variants"] = per
        else:
            report["by_day_type"][group] = per
    report["rankme"] = {name: rankme(pred[mask]) for name, pred in preds.items()}
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    plot_skill(report, out / "skill_vs_horizon.png")
    return report


def markdown(report: dict) -> str:
    cols = ("mse", "skill_vs_persistence", "cosine", "top1", "top5", "cloud_fraction_mae")
    lines = [f"# Stage-2 forecast skill (test split, {report['n_test']} samples)", "",
             "Standardised stage-1 embedding targets; skill = 1 - MSE/MSE_persistence on the same slots.", ""]
    blocks = [("all days", report["variants"])] + [(f"{k} days", v) for k, v in report["by_day_type"].items()]
    for title, block in blocks:
        lines += [f"## {title}", "", "| method | horizon (min) | n | MSE | skill | cosine | top-1 | top-5 | CF MAE |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, per_h in block.items():
            for h, m in per_h.items():
                cells = ["—" if m.get(c) is None else f"{m[c]:.3f}" for c in cols]
                lines.append(f"| {name} | {h} | {m['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Cloudy day: mean daytime cloud_fraction ≥ {report['cloudy_day_fraction_threshold']}; test days "
              f"{report['n_test_days']}. RankMe of forecasts: "
              + ", ".join(f"{k} {v:.1f}" for k, v in report["rankme"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-stage2-evaluate", __doc__)
    ap.add_argument("--stage1-run", required=True, help="stage-1 run dir (embeddings, probe)")
    ap.add_argument("--runs", nargs="*", default=[], help="stage-2 run dirs (each with ckpt.pt)")
    ap.add_argument("--out", required=True, help="where report.json, report.md and the plot go")
    args = ap.parse_args(argv)
    run_cli(lambda: print(markdown(evaluate(args.stage1_run, args.runs, args.out))), prog=ap.prog)


if __name__ == "__main__":
    main()
