"""Stage-2 evaluation: trained forecasters (one or more seeds each) vs the baselines, with bootstrap intervals.

    sagecast-stage2-evaluate --stage1-run runs/stage1 --runs runs/stage2/detr runs/stage2/jepa \
        --out runs/stage2
    python -m stage2_forecast.evaluate --stage1-run runs/stage1 --runs ... --eval-stage1-run runs/heldout \
        --out runs/stage2/heldout      # held-out: all days of another prepared folder's embeddings
    python -m stage2_forecast.evaluate ... --eval-stage1-run runs/heldout --motion runs/raw_heldout \
        --out runs/stage2/heldout      # runs trained with motion=...: the held-out sky's motion table

Everything is scored in the same space (stage-1 embeddings standardised with train statistics) on the same
slots: (sample, horizon, preset) with a daytime target whose preset was also seen at t. Per method and
horizon: MSE, cosine, skill = 1 - MSE/MSE_persistence, top-1/top-5 retrieval of the true future among all
captures of that preset on the same day, cloud-fraction MAE of the stage-1 probe applied to the forecast (vs
the prepared index's measured cloud_fraction) and its skill vs persistence; the same for clear, broken and
overcast days. Every skill carries a 95 % interval from a paired bootstrap over whole days (and seeds,
sagecast_common.bootstrap), and so do the differences detr − jepa and each variant − the strongest baseline.
Baselines (stage2_forecast.baselines) are fitted on the training folder's train/val splits; a held-out
evaluation (`--eval-stage1-run`, a stage-1 export of another prepared folder by the same encoders) scores all
its days with the training standardisation and climatology. Runs trained with the cloud-motion input read
their `motion` table for the training data and the test split; a held-out sky needs its own (`--motion PATH`,
a table or raw folder; on --real-data the user's table). Writes OUT/report.md, OUT/skill_vs_horizon.png,
OUT/forecasts.parquet (every scored forecast decoded to its nearest real frame, stage2_forecast.forecast_table:
what the HTML report shows) and, last, OUT/scores.json (the numbers; its existence means the evaluation finished).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sagecast_common.bootstrap import day_sums, distinguishable, interval, replicate_totals
from sagecast_common.cli import UserError, make_parser, read_json, require, run_cli
from sagecast_common.linalg import rankme
from sagecast_common.runio import atomic_write_json, atomic_write_text
from stage2_forecast import baselines, samples
from stage2_forecast.forecast_table import write_forecasts
from stage2_forecast.headroom import apply_probe, fit_truth_probe, headroom_block, preset_mean
from stage2_forecast.metrics import cf_block, per_day, retrieval_ranks, score, with_skill
from stage2_forecast.plots import plot_skill
from stage2_forecast.report_md import markdown, verdict_sentences
from stage2_forecast.train import SAMPLE_KEYS, Config, load_run, needs_images, ridge_cache

# Day type by mean daytime cloud_fraction (prepared index): clear < 3/8 (≤ 2 oktas), overcast ≥ 6/8.
DAY_TYPES = {"clear": 0.375, "broken": 0.75, "overcast": 1.01}
LEARNED = ("detr", "jepa")
# What only a synthetic sky can give, with why: on real data (--real-data) the reports list these as "not
# available on real data" instead of leaving them silently out.
NOT_ON_REAL_DATA = {"synthetic oracles": "they forecast the generator's true cloud fraction (thin cirrus "
                                         "included), which no camera on a real node records",
                    "headroom captured": "it is measured against a view-limited oracle that knows the true wind "
                                         "and cloud field, which only the synthetic sky has"}


@torch.no_grad()
def predict(model, cfg: Config, table, win, clim, *, base: np.ndarray | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Forecasts (N, H, P, D) on `win`; `base` is the ridge forecast on `win` a residual_base=ridge run adds to."""
    if cfg.residual and cfg.residual_base == "ridge" and base is None:
        raise ValueError(f"{cfg.run_dir} starts from the ridge forecast: pass base= (baselines.view_ridge on these "
                         "windows)")
    out = []
    for start in range(0, len(win), batch_size):
        idx = np.arange(start, min(start + batch_size, len(win)))
        out.append(model(samples.gather(table, win, idx, day_only=cfg.day_only, clim=clim, images=needs_images(cfg),
                                        base=base, means_min=cfg.context_means_min)))
    return torch.cat(out).numpy()


def day_type(cloud: float) -> str:
    return next(name for name, upper in DAY_TYPES.items() if cloud < upper)


def days_per_split(table: samples.ScanTable) -> dict[str, dict[str, int]]:
    """'VSN@lat,lon' → {split: number of local days}, for the report's statement on splits and places."""
    S = len(table.day) - 1
    seen = {(table.vsn[i], table.location[i], table.split[i], table.day[i]) for i in range(S)}
    out: dict[str, dict[str, int]] = {}
    for vsn, loc, split, _ in seen:
        key = f"{vsn}@{loc}"
        out.setdefault(key, {"train": 0, "val": 0, "test": 0})[split] = out.get(key, {}).get(split, 0) + 1
    return out


def _cis(reps: dict, point: dict, name: str, ref: str) -> tuple[float, list[float]]:
    value = 1.0 - point[name] / point[ref]
    return value, interval(1.0 - reps[name] / reps[ref])


def block(sq, mask, sel, day_idx, n_boot) -> tuple[dict, dict, dict]:
    """Skill and skill-vs-smart with intervals per method (H,) over the selected samples' days."""
    m = mask & sel[:, None, None]
    days = np.unique(day_idx[sel])
    remap = np.minimum(np.searchsorted(days, day_idx), len(days) - 1)  # unselected samples are masked out
    sums = {k: np.stack([day_sums(e, m, remap, len(days)) for e in v]) for k, v in sq.items()}
    point, reps = replicate_totals(sums, n_boot=n_boot)
    stats = {k: {"skill": _cis(reps, point, k, "persistence"), "vs_smart": _cis(reps, point, k, "smart_persistence")}
             for k in sq}
    return stats, point, reps


def comparisons(point, reps, hkeys, names, n_days: int) -> list[dict]:
    """detr − jepa, and each variant − damped anomaly and − the strongest baseline (by point skill), per horizon.

    With one evaluation day the day bootstrap has nothing to resample: no difference counts as distinguishable.
    """
    base = [k for k in point if k not in LEARNED and k != "persistence"] + ["persistence"]
    out = []
    for h, hk in enumerate(hkeys):
        strongest = min(base, key=lambda k: point[k][h])
        pairs = [("detr", "jepa")] if {"detr", "jepa"} <= set(names) else []
        pairs += [(v, b) for v in LEARNED if v in names for b in dict.fromkeys(("damped_anomaly", strongest))]
        for a, b in pairs:
            diff = (point[b][h] - point[a][h]) / point["persistence"][h]
            ci = interval((reps[b][:, h] - reps[a][:, h]) / reps["persistence"][:, h])
            out.append({"a": a, "b": b, "horizon": float(hk), "diff": float(diff), "ci": ci.tolist(),
                        "distinguishable": n_days >= 2 and distinguishable(ci),
                        "b_is_strongest_baseline": b == strongest})
    return out


def check_embeddings(stage1_run) -> None:
    """A missing, truncated or foreign embeddings file is a user error naming it, not a pyarrow traceback."""
    run = Path(stage1_run)
    path = require(run / "embeddings.parquet", what="stage-1 embeddings", made_by=f"sagecast-stage1-export --run {run}")
    try:
        pq.read_metadata(path)  # the footer: absent in a truncated file, garbage in a foreign one
        json.loads(require(run / "embeddings.json", made_by=f"sagecast-stage1-export --run {run}").read_text())
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"{path.parent}: unreadable embeddings ({e}): rerun `sagecast-stage1-export --run {run}`") \
            from None


def read_probe(stage1_run) -> dict | None:
    """RUN/probe_cloud_fraction.json (stage1_jea.evaluate), or None when absent."""
    path = Path(stage1_run) / "probe_cloud_fraction.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}): rerun `sagecast-stage1-evaluate --run {stage1_run}`") \
            from None


def evaluate(stage1_run, runs, out_dir, *, eval_stage1_run=None, raw_dir=None, n_boot: int = 1000,
             base: Config | None = None, real_data: bool = False, motion=None) -> dict:
    if real_data and raw_dir is not None:
        raise UserError("--real-data reads no raw folder: the oracles need a synthetic sky's truth, drop --raw")
    if motion is not None and eval_stage1_run is None:
        raise UserError("--motion is the held-out sky's motion table (with --eval-stage1-run); the test split uses "
                        "the one the runs were trained with (their motion=...)")
    (Path(out_dir) / "scores.json").unlink(missing_ok=True)  # a previous evaluation's record: not this one's
    loaded = [(r, *load_run(r)) for r in runs]
    for run in (stage1_run, eval_stage1_run) if eval_stage1_run is not None else (stage1_run,):
        check_embeddings(run)
    base = loaded[0][1] if loaded else (base or Config(stage1_run=str(stage1_run)))
    keys = tuple(k for k in SAMPLE_KEYS if k != "context_scans")
    for r, cfg, _, _ in loaded:
        if any(getattr(cfg, k) != getattr(base, k) for k in keys):
            raise UserError(f"{r}: sample settings {[(k, getattr(cfg, k)) for k in keys]} differ from {runs[0]}")
    fit = samples.load_scan_table(stage1_run, features=base.features, gap_s=base.scan_gap_s, prepared_dir=base.prepared)
    samples.restrict_train_days(fit, base.train_days)  # the baselines learn from the runs' train days; test as is
    if base.motion is not None:  # the runs' own table, for the training data (and so the test split)
        samples.join_motion(fit, samples.read_motion(base.motion), source=f"motion={base.motion}")
    elif motion is not None:
        raise UserError(f"--motion {motion}: the runs were trained without the cloud-motion input (motion=None)")
    mean, std = samples.standardise(fit, day_only=base.day_only)
    for r, _, _, stats in loaded:
        if stats["mean"].shape != mean.shape or not (np.allclose(stats["mean"], mean, atol=1e-4)
                                                     and np.allclose(stats["std"], std, rtol=1e-4)):
            raise UserError(f"{r} was trained on other embeddings than {stage1_run} (standardisation differs)")
    held_out = eval_stage1_run is not None
    table = samples.load_scan_table(eval_stage1_run, features=base.features, gap_s=base.scan_gap_s) if held_out else fit
    if held_out:
        samples.standardise(table, mean=mean, std=std)
        if base.motion is not None:
            source = motion or base.motion
            samples.join_motion(table, samples.read_motion(source),
                                source=f"--motion {source}" if motion else f"motion={source} (the runs'; give the "
                                "held-out sky's with --motion)")
    kw = dict(horizons_min=base.horizons_min, step_min=base.step_min, tolerance_min=base.tolerance_min,
              day_only=base.day_only, day_anchors=base.day_anchors)
    split = None if held_out else "test"
    wins = {s: samples.build_windows(fit, split=s, context_scans=base.context_scans, **kw) for s in ("train", "val")}
    test = samples.build_windows(table, split=split, context_scans=base.context_scans, **kw)
    if len(test) == 0:
        raise UserError(f"no evaluation samples in {eval_stage1_run or stage1_run}: are there daytime scans?")
    clim = baselines.fit_climatology(fit, day_only=base.day_only)
    b = samples.gather(table, test, np.arange(len(test)), day_only=base.day_only, clim=clim, means_min=None)
    true, mask = b["tgt_z"].numpy(), b["tgt_mask"].numpy()
    damping = baselines.fit_damping_by_day(fit, wins["train"], day_only=base.day_only)
    found, fitted = baselines.forecasts(None, b, damping=damping)
    del b  # its context and climatology are GBs on make compare's test split; the targets stay (true, mask)
    # the fits every run's residual start used (ridge_cache: the same key as in training; refitted when absent)
    cache = ridge_cache(dataclasses.replace(base, stage1_run=str(stage1_run)), fit)
    found["ridge"], fitted["ridge_alpha"] = baselines.view_ridge(fit, wins, table, test, day_only=base.day_only,
                                                                 means_min=base.context_means_min, cache=cache)
    preds = {k: [v] for k, v in found.items()}
    run_names: dict[str, list[str]] = {}  # method -> its run folders' names, in the order of preds[method]
    for r, cfg, model, _ in loaded:
        twin = samples.build_windows(table, split=split, context_scans=cfg.context_scans, **kw)
        if not np.array_equal(twin.anchor, test.anchor):
            raise ValueError(f"{cfg.run_dir}: its windows differ from the baselines' ({len(twin)} vs {len(test)})")
        # a residual_base=ridge run adds its output to this very ridge forecast (the one it was trained from)
        preds.setdefault(cfg.variant, []).append(predict(model, cfg, table, twin, clim, base=found["ridge"]))
        run_names.setdefault(cfg.variant, []).append(Path(r).name)
    probe = read_probe(stage1_run)
    use_probe = probe is not None and len(probe["coef"]) == true.shape[-1]

    def cloud(pred):
        if not use_probe:
            return None
        raw = pred * std + mean
        return ((raw - np.array(probe["feature_mean"])) / np.array(probe["feature_std"])) @ np.array(probe["coef"]) \
            + probe["intercept"]

    cf_true = table.cloud[test.tgt]  # (N, H, P) measured cloud_fraction of the target capture
    cf = {k: [cloud(p) for p in v] for k, v in preds.items()} if use_probe else {}
    scalar = baselines.cloud_fraction(table, test)
    oracles, cf_truth, oracle_note = (({}, None, "not available on real data") if real_data else
                                      baselines.oracle_cloud_fraction(table, test, raw_dir, base.horizons_min))
    cf.update({k: [v] for k, v in scalar.items()})
    day_ords, day_idx = np.unique(table.day[test.anchor], return_inverse=True)
    daytime = table.present & table.is_day
    day_cloud = np.array([np.nanmean(table.cloud[table.day == d][daytime[table.day == d]]) for d in day_ords])
    types = np.array([day_type(c) for c in day_cloud])
    hkeys = [f"{h:g}" for h in base.horizons_min]
    sq = {k: [((p - true) ** 2).mean(-1) for p in v] for k, v in preds.items()}
    report = {"horizons_min": list(base.horizons_min), "n_test": len(test), "variants": {}, "by_day_type": {},
              "rankme": {k: rankme(v[0][mask]) for k, v in preds.items()},
              "ridge_alpha": {hkeys[h]: a for h, a in fitted["ridge_alpha"].items()},
              "damping_mean": {hk: float(fitted["damping"][h].mean()) for h, hk in enumerate(hkeys)},
              "day_type_upper_cloud_fraction": DAY_TYPES, "cloud_fraction_probe": use_probe,
              "n_test_days": {t: int((types == t).sum()) for t in DAY_TYPES},
              "seeds": {k: len(v) for k, v in preds.items()}, "n_boot": n_boot, "oracles": oracle_note,
              "not_on_real_data": NOT_ON_REAL_DATA if real_data else {},
              "eval": {"stage1_run": str(eval_stage1_run or stage1_run), "held_out": held_out,
                       "split": split or "all",
                       "motion": None if base.motion is None else str(motion or base.motion)},
              "days_per_split_per_location": {"train_data": days_per_split(fit)}}
    if held_out:
        report["days_per_split_per_location"]["eval_data"] = days_per_split(table)
    for group in ("all", *DAY_TYPES):
        sel = np.ones(len(test), bool) if group == "all" else types[day_idx] == group
        if not sel.any():
            continue
        m = mask & sel[:, None, None]
        stats, point, reps = block(sq, mask, sel, day_idx, n_boot)
        per = {}
        for name, members in preds.items():
            runs_scored = [score(p, true, m, retrieval_ranks(p, table, test, m, day_only=base.day_only),
                                 cf[name][k] if name in cf else None, np.nan_to_num(cf_true))
                           for k, p in enumerate(members)]
            per[name] = {hk: {key: _mean([s[h][key] for s in runs_scored]) for key in runs_scored[0][h]}
                         for h, hk in enumerate(hkeys)}
            for h, hk in enumerate(hkeys):
                (_, ci), (vs, vs_ci) = stats[name]["skill"], stats[name]["vs_smart"]
                per[name][hk].update({"skill_ci": ci[:, h].tolist(), "skill_vs_smart": float(vs[h]),
                                      "skill_vs_smart_ci": vs_ci[:, h].tolist(), "seeds": len(members)})
        ref = {hk: per["persistence"][hk] for hk in hkeys}
        for name in per:
            with_skill(per[name], ref)
            for h, hk in enumerate(hkeys):  # the bootstrap's point value: the seed-mean of the errors, float64
                per[name][hk]["skill_vs_persistence"] = float(stats[name]["skill"][0][h])
        if group == "all":
            report["variants"], report["comparisons"] = per, comparisons(point, reps, hkeys, preds, len(day_ords))
            report["cloud_fraction"] = cf_block(cf, cf_true, m, day_idx, len(day_ords), hkeys, n_boot)
            if oracles:  # in the generator's true cloud fraction, the quantity the oracles forecast
                report["cloud_fraction_truth"] = cf_block({k: [v] for k, v in oracles.items()}, cf_truth, m,
                                                          day_idx, len(day_ords), hkeys, n_boot)
            report["per_day"] = per_day(sq, mask, day_idx, day_ords, day_cloud, types, hkeys)
            report["headroom"] = headroom(fit, wins, table, preds, oracles, cf_truth, mask, day_idx,
                                          len(day_ords), hkeys, n_boot, raw_dir=raw_dir, base=base,
                                          now_present=table.present[test.anchor])
        else:
            report["by_day_type"][group] = per
    out = Path(out_dir)
    report["verdict"] = verdict_sentences(report)  # the plain sentences, also for the HTML report
    atomic_write_text(out / "report.md", markdown(report))
    plot_skill(report, out / "skill_vs_horizon.png")
    write_forecasts(out / "forecasts.parquet", preds, run_names, table, test, mask)
    atomic_write_json(out / "scores.json", report)  # last: its existence means every output above is complete
    return report


def headroom(fit, wins, table, preds, oracles, cf_truth, mask, day_idx, n_days, hkeys, n_boot, *,
             raw_dir, base, now_present) -> dict:
    """The `headroom` block of scores.json (stage2_forecast.headroom), or why there is none.

    Every forecast (the networks' and the embedding baselines') is read through one ridge probe fitted on the
    TRAIN targets' embeddings to the generator's true cloud fraction (validation picks its penalty); the
    view-limited oracle is the one that knows the rows the networks saw (sky, or sky + horizon). Besides the
    embedding baselines of `preds`, the 8-preset mean (headroom.preset_mean: the sky views present at t,
    `now_present` (N, P)) is a candidate for the strongest baseline."""
    kind = "view_horizon" if table.horizon_present is not None else "view"
    if cf_truth is None or f"cf_oracle_{kind}" not in oracles:
        return {"available": False, "why": f"needs data.synthetic truth with oracle_{kind}_cf_<h> (the generator's "
                                           "true cloud fraction and view-limited oracle); none was read, and real "
                                           "data has none"}
    models = [m for m in LEARNED if m in preds]
    if not models:
        return {"available": False, "why": "no network runs to score"}
    train_raw = read_json(Path(fit.prepared_dir) / "report.json", made_by="sagecast-prepare",
                          what="prepare summary").get("raw")
    truth_of = {}
    for split in ("train", "val"):
        _, truth, note = baselines.oracle_cloud_fraction(fit, wins[split], train_raw, base.horizons_min)
        if truth is None:
            return {"available": False, "why": f"the training data's truth is unreadable ({note})"}
        truth_of[split] = truth
    xy = {}
    for split in ("train", "val"):
        z, m = samples.targets(fit, wins[split], day_only=base.day_only)
        ok = m & np.isfinite(truth_of[split])
        xy[split] = (z[ok], truth_of[split][ok])
    probe = fit_truth_probe(*xy["train"], *xy["val"])
    cf_models = {m: [apply_probe(probe, p) for p in preds[m]] for m in models}
    cf_base = {k: apply_probe(probe, v[0]) for k, v in preds.items() if k not in LEARNED}
    cf_base["preset_mean"] = np.broadcast_to(apply_probe(probe, preset_mean(preds["persistence"][0][:, 0],
                                                                            now_present)), cf_truth.shape)
    out = headroom_block(cf_models, cf_base, oracles[f"cf_oracle_{kind}"], cf_truth, mask, day_idx, n_days, hkeys,
                         n_boot=n_boot)
    return {"available": True, "oracle": f"oracle_{kind}_cf_<h>", "probe_alpha": probe["alpha"], **out}


def _mean(values):
    return None if values[0] is None else float(np.mean(values)) if not isinstance(values[0], int) else values[0]


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-stage2-evaluate", __doc__)
    ap.add_argument("--stage1-run", required=True, help="stage-1 run dir (embeddings, probe)")
    ap.add_argument("--runs", nargs="*", default=[], help="stage-2 run dirs (each with ckpt.pt)")
    ap.add_argument("--out", required=True,
                    help="where scores.json, forecasts.parquet, report.md and skill_vs_horizon.png go")
    ap.add_argument("--eval-stage1-run", help="held-out: embeddings of another prepared folder by the same encoders")
    ap.add_argument("--raw", help="raw data.synthetic folder with <VSN>/truth.parquet (cloud-fraction oracles)")
    ap.add_argument("--real-data", action="store_true",
                    help="the data is a real sky: read no synthetic truth, and list what needs it as not available")
    ap.add_argument("--motion", help="held-out: the held-out sky's cloud-motion table or raw folder, for runs "
                                     "trained with motion=... (default: the runs' own)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    args = ap.parse_args(argv)
    run_cli(lambda: print(markdown(evaluate(args.stage1_run, args.runs, args.out, eval_stage1_run=args.eval_stage1_run,
                                            raw_dir=args.raw, n_boot=args.n_boot, real_data=args.real_data,
                                            motion=args.motion))),
            prog=ap.prog)


if __name__ == "__main__":
    main()
