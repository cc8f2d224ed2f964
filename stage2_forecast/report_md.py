"""report.md from stage2_forecast.evaluate's scores (OUT/scores.json): tables with 95 % intervals, plain sentences."""

from __future__ import annotations


def _ci(m: dict, key: str, ci_key: str) -> str:
    lo, hi = m[ci_key]
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def verdict_sentences(report: dict) -> list[str]:
    """One plain sentence per horizon: which differences the intervals can tell apart."""
    out = []
    for h in report["horizons_min"]:
        rows = [c for c in report.get("comparisons", []) if c["horizon"] == float(h)]
        if not rows:
            continue
        yes = [f"{c['a']} − {c['b']} = {c['diff']:+.3f}" for c in rows if c["distinguishable"]]
        no = [f"{c['a']} − {c['b']}" for c in rows if not c["distinguishable"]]
        text = f"{h:g} min: "
        text += ("distinguishable from 0: " + "; ".join(yes) + ". ") if yes else "no difference is distinguishable. "
        text += ("Inside the noise: " + ", ".join(no) + ".") if no and yes else ""
        out.append(text.rstrip())
    return out


def markdown(report: dict) -> str:
    ev = report["eval"]
    title = "held-out data (all days)" if ev["held_out"] else "test split"
    n_days = sum(report["n_test_days"].values())
    lines = [f"# Stage-2 forecast skill ({title}, {report['n_test']} samples, {n_days} days)", "",
             f"Evaluated on {ev['stage1_run']}. Standardised stage-1 embedding targets; skill = 1 − "
             "MSE/MSE_persistence on the same slots; [lo, hi] = 95 % paired bootstrap interval over whole days "
             "(and stage-2 seeds, "
             f"{report['n_boot']} replicates). Seeds per method: {report['seeds']}. One set of stage-1 encoders: "
             "the spread across stage-1 seeds is not in the intervals (measured for `make compare` in "
             "docs/results.md).", "",
             "## Which differences are distinguishable", ""]
    if n_days < 2:
        lines += ["Only one evaluation day: the day bootstrap has nothing to resample, every interval below is a "
                  "point and no difference is called distinguishable. Evaluate on more days (`make compare`).", ""]
    lines += [f"- **{head}**: {rest}" for head, _, rest in (v.partition(": ") for v in verdict_sentences(report))]
    lines += [""]
    lines += ["| a | b | horizon | a − b (skill) | 95 % CI | distinguishable |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['a']} | {c['b']} | {c['horizon']:g} | {c['diff']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
              f"{'yes' if c['distinguishable'] else 'no'} |" for c in report.get("comparisons", [])]
    blocks = [("all days", report["variants"])]
    blocks += [(f"{k} days ({report['n_test_days'][k]})", v) for k, v in report["by_day_type"].items()]
    for name, block in blocks:
        lines += ["", f"## {name}", "", "| method | horizon | n | MSE | skill [95 % CI] | skill vs smart persistence "
                  "| cosine | top-1 | top-5 | CF MAE |", "|---|---|---|---|---|---|---|---|---|---|"]
        for method, per_h in block.items():
            for h, m in per_h.items():
                cells = ["—" if m.get(c) is None else f"{m[c]:.3f}" for c in ("cosine", "top1", "top5",
                                                                               "cloud_fraction_mae")]
                skill = _ci(m, "skill_vs_persistence", "skill_ci")
                vs_smart = _ci(m, "skill_vs_smart", "skill_vs_smart_ci")
                lines.append(f"| {method} | {h} | {m['n']} | {m['mse']:.3f} | {skill} | {vs_smart} | "
                             + " | ".join(cells) + " |")
    lines += ["", "## Cloud fraction MAE", "", "Against the measured cloud fraction of the target capture (the "
              "thermal cloud mask of data.prepare); forecasts through the stage-1 probe.", ""]
    lines += _mae_table(report, report.get("cloud_fraction", {}))
    if report.get("not_on_real_data"):
        lines += ["", "## Not available on real data", ""]
        lines += [f"- {name}: not available on real data: {why}." for name, why in report["not_on_real_data"].items()]
    else:
        lines += ["", "## Synthetic oracles (generator's true cloud fraction)", "", f"Oracles: {report['oracles']}. "
                  "Scored against the generator's true cloud fraction (both layers: thin cirrus counts, which the "
                  "thermal mask above misses), so compare them with `cf_truth_persistence` here, not with the "
                  "table above.", ""]
        lines += _mae_table(report, report.get("cloud_fraction_truth", {}))
        lines += ["", "## Headroom captured", ""] + headroom_lines(report.get("headroom"))
    methods = list(report["variants"])
    lines += ["", "## Per day (skill at each horizon)", "",
              "| day | type | mean CF | samples | " + " | ".join(methods) + " |",
              "|---|---|---|---|" + "---|" * len(methods)]
    for d in report.get("per_day", []):
        cells = [" / ".join("—" if v is None else f"{v:.2f}" for v in d["skill"][k].values()) for k in methods]
        lines.append(f"| {d['day']} | {d['type']} | {d['mean_cloud_fraction']:.2f} | {d['n_samples']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## Days per split per location", ""]
    for which, places in report["days_per_split_per_location"].items():
        lines += [f"- {which}: " + "; ".join(f"{k}: {v}" for k, v in places.items())]
    lines += ["", f"Day types by mean daytime cloud fraction (upper bounds {report['day_type_upper_cloud_fraction']}): "
              f"{report['n_test_days']}. Fitted damping a_h (mean over dims): {report['damping_mean']}. RankMe of "
              "forecasts: " + ", ".join(f"{k} {v:.1f}" for k, v in report["rankme"].items()) + "."]
    return "\n".join(lines) + "\n"


def headroom_lines(block: dict | None) -> list[str]:
    """The headroom table (stage2_forecast.headroom), or the sentence saying why there is none."""
    if not block or not block.get("available"):
        return [f"Not available: {(block or {}).get('why', 'not computed by this evaluation')}."]
    lines = [f"(strongest baseline − model) / (baseline − view-limited oracle {block['oracle']}), in {block['unit']}; "
             f"forecasts through a probe fitted on train to the true cloud fraction. Interval: {block['interval']}.",
             "", "| model | horizon | headroom [95 % CI] | baseline | MAE baseline | MAE model | MAE oracle |",
             "|---|---|---|---|---|---|---|"]
    for model, per_h in block["models"].items():
        for h, r in per_h.items():
            if "mae_model" not in r:
                lines.append(f"| {model} | {h} | — ({r['why']}) | | | | |")
                continue
            share = (f"{r['headroom']:+.2f} [{r['headroom_ci'][0]:+.2f}, {r['headroom_ci'][1]:+.2f}]"
                     if r["headroom"] is not None else f"— ({r['why']})")
            lines.append(f"| {model} | {h} | {share} | {r['baseline']} | {r['mae_baseline']:.4f} | "
                         f"{r['mae_model']:.4f} | {r['mae_oracle']:.4f} |")
    return lines


def _mae_table(report: dict, block: dict) -> list[str]:
    lines = ["| method | " + " | ".join(f"{h:g} min" for h in report["horizons_min"]) + " |",
             "|---|" + "---|" * len(report["horizons_min"])]
    for method, per_h in block.items():
        lines.append(f"| {method} | " + " | ".join(f"{m['mae']:.3f} [{m['mae_ci'][0]:.3f}, {m['mae_ci'][1]:.3f}]"
                                                  for m in per_h.values()) + " |")
    return lines if block else lines + ["| (none) |" + " |" * len(report["horizons_min"])]
