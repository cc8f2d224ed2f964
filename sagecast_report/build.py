"""One self-contained HTML report of a run: data, stage 1, stage 2 and the verdict, images embedded.

    python -m sagecast_report --runs runs                            # -> runs/stage2/report.html
    python -m sagecast_report --prepared P --stage1 S1 --stage2 S2 --report-dir R --out report.html [--check]

A pure function of files (it imports no training or evaluation code and runs no model): RUNS/prepared (index,
arrays, report.json; RAW/<VSN>/truth.parquet when synthetic), RUNS/stage1 (training_loss.png, metrics.json,
features_pca.parquet, retrieval_examples.json, embeddings.json, config/env.json: from stage-1 train and
evaluate), the stage-2 evaluate folder (scores.json, skill_vs_horizon.png, forecasts.parquet; --report-dir,
default STAGE2) and the run folders under STAGE2 (config/env.json, for provenance). Anything absent is reported
as "not available"; a file that cannot be read ends in one line and exit 2. Opens offline in any browser
(images are base64 JPEG/PNG inside the file). `--check` then loads the page in headless Chromium (Debian
`chromium` + `chromium-driver`, through Selenium), checks it and writes a full-page screenshot next to it
(OUT stem + `_screenshot.png`).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from sagecast_common.cli import UserError, make_parser, run_cli
from sagecast_common.plots import figure_bytes
from sagecast_common.runio import _git_commit, atomic_write_text  # not environment_info: that imports torch
from sagecast_report import figures as figs
from sagecast_report import inputs
from sagecast_report import stage1 as s1

NA = '<p class="na">not available</p>'
CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px;color:#222}
img{max-width:100%;height:auto;display:block}figure{margin:12px 0}figcaption{font-size:90%;color:#555}
table{border-collapse:collapse;font-size:90%;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px}
.wide{overflow-x:auto;max-width:100%}pre{white-space:pre-wrap;word-break:break-all;font-size:80%}
.na{color:#a33;font-style:italic}section{border-top:2px solid #ddd;margin-top:24px}"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fig_html(fig, caption: str, *, fmt: str = "png") -> str:
    """Embed a matplotlib figure (JPEG for photographs of the sky, PNG for line plots)."""
    return img_html(figure_bytes(fig, fmt=fmt), caption, mime=f"image/{fmt}")


def img_html(data: bytes, caption: str, *, mime: str = "image/png") -> str:
    src = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return f'<figure><img src="{src}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def table_html(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def num(x, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def interval(ci) -> str:
    return f"[{num(ci[0])}, {num(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else "—"


def with_ci(block: dict, key: str) -> str:
    """`value [lo, hi]` of block[key] and block[key + "_ci"] (older metrics without an interval: the value)."""
    ci = block.get(f"{key}_ci")
    return num(block.get(key)) + (f" {interval(ci)}" if ci is not None else "")


def data_section(prepared: Path, index, rgb, thermal) -> str:
    rep = inputs.read_json(prepared / "report.json") or {}
    out = [f"<p>{len(index)} pairs ({int(index['is_day'].sum())} day, {int((~index['is_day']).sum())} night) "
           f"from {esc(beside(rep.get('raw', prepared), prepared))}; "
           f"skipped {esc(rep.get('skipped_by_reason', 'not available'))}.</p>"]
    for vsn in sorted(index["vsn"].unique()):
        out.append(fig_html(figs.data_strip(index, rgb, thermal, vsn), f"{vsn}: captures across one day per sky "
                            "preset (day chosen as the widest range of cloud fraction)", fmt="jpeg"))
    out.append(fig_html(figs.day_night_timeline(index), "every capture by local solar time; colour = split"))
    rows = []
    for (vsn, lat, lon), g in index.groupby(["vsn", "lat", "lon"]):
        for split in ("train", "val", "test"):
            days = sorted(g.loc[g["split"] == split, "local_date"].astype(str).unique())
            rows.append([vsn, f"{lat:.3f}, {lon:.3f}", split, len(days), ", ".join(days) or "none",
                         int((g["split"] == split).sum())])
    return "\n".join(out) + table_html(["node", "lat, lon", "split", "days", "dates", "pairs"], rows)


def stage1_section(stage1: Path, index, rgb, thermal) -> str:
    out = ["<h3>Training</h3>"]
    loss = stage1 / "training_loss.png"
    out.append(img_html(loss.read_bytes(), "VICReg loss, weighted terms and learning rate over steps")
               if loss.is_file() else NA)
    metrics = inputs.read_json(stage1 / "metrics.json")
    if metrics:
        rows = []
        for label, key in (("trained", "trained"), ("random init", "random_init"), ("raw pixels 8×8", "raw_pixels")):
            m = metrics.get(key, {})
            r, p = m.get("retrieval", {}), m.get("probes", {}).get("cloud_fraction", {})
            r_t, t_r = r.get("rgb_to_thermal", {}), r.get("thermal_to_rgb", {})
            rows.append([label, with_ci(r_t, "top1"), with_ci(r_t, "top5"), with_ci(t_r, "top5"),
                         with_ci(p, "ridge_test_r2")])
        retrieval = metrics.get("trained", {}).get("retrieval", {})
        out.append(table_html(["features", "RGB→thermal top-1", "RGB→thermal top-5", "thermal→RGB top-5",
                               "cloud-fraction ridge R²"], rows)
                   + f"<p>Test split, CCA-aligned retrieval; chance top-5: {num(retrieval.get('chance_top5'), '.4f')}. "
                   f"Intervals: 95 % over {retrieval.get('test_days', '—')} test days resampled (one stage-1 seed: "
                   "the spread across stage-1 seeds is not in them).</p>")
    out.append("<h3>Embeddings: trained vs random init</h3>")
    pca = inputs.read_parquet(stage1 / "features_pca.parquet", inputs.PCA_COLUMNS)
    if pca is not None and len(pca):
        n = len(pca[(pca["features"] == "trained") & (pca["branch"] == "rgb")])
        seed = (metrics or {}).get("random_init_seed", "—")
        out.append(fig_html(s1.pca_figure(pca), f"PCA of backbone features, {n} daytime frames; random init = same "
                            f"architectures, seed {seed}"))
    else:
        out.append(NA)
    out.append("<h3>Retrieval examples (test split, projector space)</h3>")
    examples = inputs.read_json(stage1 / "retrieval_examples.json")
    frames = [f for e in (examples or {}).get("examples", []) for f in (e["query"], *e["matches"])]
    if frames and inputs.frames_match(index, [f["row"] for f in frames], [f["vsn"] for f in frames],
                                      [f["position"] for f in frames]):
        out.append(fig_html(s1.retrieval_figure(examples["examples"], rgb, thermal),
                            f"RGB query against all {examples['n_pool']} test daytime thermal frames (cosine)"))
    else:
        out.append(NA)
    return "\n".join(out)


def stage2_section(report_dir: Path, scores: dict | None, index, truth, rgb) -> str:
    if scores is None:
        return NA
    skill = report_dir / "skill_vs_horizon.png"
    out = [img_html(skill.read_bytes(), "skill vs persistence by horizon; baselines dashed") if skill.is_file() else NA]
    rows = [[name, h, m.get("n", "—"), num(m.get("skill_vs_persistence")), interval(m.get("skill_ci")),
             num(m.get("skill_vs_smart")), interval(m.get("skill_vs_smart_ci")), num(m.get("top1")),
             num(m.get("cloud_fraction_mae"))]
            for name, per_h in scores.get("variants", {}).items() for h, m in per_h.items()]
    out.append(table_html(["method", "horizon (min)", "n", "skill", "95 % interval", "skill vs smart persistence",
                           "95 % interval", "top-1", "CF MAE"], rows))
    if "headroom captured" not in (scores.get("not_on_real_data") or {}):
        out.append("<h3>Headroom captured</h3>" + headroom_html(scores.get("headroom")))
    curve = report_dir / "learning_curve.png"
    if curve.is_file():  # sagecast-compare --train-days: the nested training sets, scored on the same test days
        out.append("<h3>Learning curve</h3>" + img_html(curve.read_bytes(), "skill vs persistence against training "
                                                        "days (nested training sets, same test days; 95 % intervals)"))
    out += [f'<p class="na">{esc(name)}: not available on real data: {esc(why)}.</p>'
            for name, why in (scores.get("not_on_real_data") or {}).items()]
    fc = inputs.read_parquet(report_dir / "forecasts.parquet", inputs.FORECAST_COLUMNS)
    if fc is None or not len(fc):
        return "\n".join(out + ["<h3>Forecasts</h3>", NA])
    horizons = np.sort(fc["horizon_min"].unique())
    horizon = float(horizons[np.argmin(np.abs(horizons - 15.0))])
    fc = fc[fc["horizon_min"] == horizon]
    if not all(inputs.frames_match(index, fc[f"{w}_row"], fc["vsn"], fc["preset"])
               for w in ("anchor", "target", "nearest")):
        return "\n".join(out + ["<h3>Forecasts</h3>", f'<p class="na">not available: {esc(report_dir)}/'
                                 f"forecasts.parquet shows frames of another prepared folder</p>"])
    labels = figs.labels(fc)
    shown = {k: v for k, v in labels.items() if k[0] == "persistence" or k[1]}  # persistence and the trained runs
    out.append(f"<h3>Cloud fraction over each test day ({horizon:g}-minute forecasts)</h3>")
    out.append(fig_html(figs.cloud_fraction_days(fc, shown, truth), "forecast cloud fraction = the measured cloud "
                        "fraction of the real frame nearest to the forecast embedding (same preset and day), mean "
                        "over presets"))
    trained = {k: v for k, v in shown.items() if k[0] != "persistence"}
    out.append(f"<h3>Forecast strips (+{horizon:g} min)</h3>")
    out.append(fig_html(figs.forecast_strips(fc, rgb, trained), "anchors: the largest change in cloud fraction "
                        "from t to t+h (one slot per scan); d = distance of the forecast to that frame's "
                        "standardised embedding", fmt="jpeg") if trained else NA)
    return "\n".join(out)


def headroom_html(block: dict | None) -> str:
    """Share of the gap between the strongest baseline and the view-limited oracle each network closes."""
    if not block or not block.get("available"):
        return f'<p class="na">not available: {esc((block or {}).get("why", "not computed by this evaluation"))}</p>'
    rows = []
    for model, per_h in block["models"].items():
        for h, r in per_h.items():
            if "mae_model" not in r:
                rows.append([model, h, f"— ({r['why']})", "", "", "", ""])
                continue
            share = (f"{num(r['headroom'], '+.2f')} {interval(r['headroom_ci'])}" if r["headroom"] is not None
                     else f"— ({r['why']})")
            rows.append([model, h, share, r["baseline"], num(r["mae_baseline"], ".4f"), num(r["mae_model"], ".4f"),
                         num(r["mae_oracle"], ".4f")])
    return (f"<p>(strongest baseline − model) / (baseline − view-limited oracle <code>{esc(block['oracle'])}</code>) "
            f"in {esc(block['unit'])}; {esc(block['interval'])}.</p>"
            + table_html(["model", "horizon (min)", "headroom captured [95 %]", "baseline", "MAE baseline",
                          "MAE model", "MAE oracle"], rows))


def verdict_section(prepared: Path, stage1: Path, stage2: Path, scores: dict | None) -> str:
    out = []
    sentences = list((scores or {}).get("verdict") or [])  # evaluate's plain sentences, one per horizon
    comparisons = (scores or {}).get("comparisons") or []
    out.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>" if sentences else NA)
    if comparisons:
        out.append(table_html(["a", "b", "horizon", "difference", "95 % interval", "distinguishable"],
                              [[c.get("a"), c.get("b"), c.get("horizon"), num(c.get("diff")), interval(c.get("ci")),
                                c.get("distinguishable", "—")] for c in comparisons]))
    out.append("<h3>Provenance</h3>")
    emb = inputs.read_json(stage1 / "embeddings.json") or {}
    prep = inputs.read_json(prepared / "report.json") or {}
    runs = {"stage1": stage1} | {f"stage2/{r.name}": r for r in inputs.stage2_runs(stage2)}
    rows = [["report built at", _git_commit() or "unknown"]]
    for name, run in runs.items():
        env, cfg = inputs.read_json(run / "env.json") or {}, inputs.read_json(run / "config.json") or {}
        rows.append([f"{name} git commit", env.get("git_commit", "not available")])
        rows.append([f"{name} seed", cfg.get("seed", "not available")])
    rows += [["prepare seed / split fractions", f"{prep.get('seed', '—')} / {prep.get('fractions', '—')}"],
             ["data fingerprint (index.parquet)", emb.get("prepared_fingerprint", "not available")],
             ["stage-1 encoders sha256", emb.get("checkpoint_sha256", "not available")]]
    out.append(table_html(["what", "value"], rows))
    for name, run in runs.items():
        cfg = inputs.read_json(run / "config.json")
        if cfg is not None:
            out.append(f"<details><summary>{esc(name)} config.json</summary><pre>"
                       f"{esc(json.dumps(cfg, indent=1, sort_keys=True))}</pre></details>")
    return "\n".join(out)


def beside(path: str | Path, prepared: Path) -> str:
    """`path` as seen from where `prepared` was given: prepare records the raw folder's absolute path, which would
    put a machine's own folders on the page; a raw folder next to the prepared one reads `runs/raw`."""
    path, home = Path(path), Path(prepared).resolve().parent
    try:
        return str(Path(prepared).parent / path.resolve().relative_to(home))
    except ValueError:  # elsewhere: the page says where it is
        return str(path)


def build(*, prepared: Path, stage1: Path, stage2: Path, out: Path, report_dir: Path | None = None) -> Path:
    """Write the report to `out` atomically; returns `out`. Stage-2 evaluate's files are read from `report_dir`
    (default `stage2`: `make compare` keeps its runs and its evaluations in separate folders)."""
    import matplotlib

    index = inputs.read_index(prepared)
    rgb, thermal = inputs.read_frames(prepared)
    report_dir = Path(report_dir or stage2)
    scores = inputs.read_json(report_dir / "scores.json")
    # A real sky (stage-2 evaluate --real-data) has no generator truth: none is read, even if a file is there.
    real = bool((scores or {}).get("not_on_real_data"))
    truth = None if real else inputs.read_truth(prepared, sorted(index["vsn"].unique()))
    # Labels carry folder, node and method names: plain text, never mathtext (a "$" in a name must not parse).
    with matplotlib.rc_context({"text.parse_math": False}):
        sections = [("data", "1 Data", data_section(prepared, index, rgb, thermal)),
                    ("stage1", "2 Stage 1: RGB–thermal embeddings", stage1_section(stage1, index, rgb, thermal)),
                    ("stage2", "3 Stage 2: forecasts", stage2_section(report_dir, scores, index, truth, rgb)),
                    ("verdict", "4 Verdict", verdict_section(prepared, stage1, stage2, scores))]
    body = "\n".join(f'<section id="{sid}"><h2>{esc(title)}</h2>\n{content}</section>'
                     for sid, title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>sagecast report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><h1>sagecast report</h1>\n<p>{esc(prepared)} · {esc(stage1)} · {esc(stage2)}</p>\n{body}"
            "</body></html>\n")
    atomic_write_text(out, page)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = make_parser("sagecast-report", __doc__)
    ap.add_argument("--runs", default="runs", help="RUNS folder holding prepared/, stage1/, stage2/")
    for name in ("prepared", "stage1", "stage2"):
        ap.add_argument(f"--{name}", help=f"{name} folder (default RUNS/{name})")
    ap.add_argument("--report-dir", help="stage-2 evaluate's folder: scores.json, forecasts.parquet, "
                                         "skill_vs_horizon.png (default STAGE2)")
    ap.add_argument("--out", help="report path (default STAGE2/report.html)")
    ap.add_argument("--check", action="store_true",
                    help="then check the page in headless Chromium and write OUT stem + _screenshot.png")
    args = ap.parse_args(argv)
    dirs = {k: Path(getattr(args, k) or Path(args.runs) / k) for k in ("prepared", "stage1", "stage2")}
    out = Path(args.out or dirs["stage2"] / "report.html")

    def run() -> None:
        build(**dirs, out=out, report_dir=Path(args.report_dir) if args.report_dir else None)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        if args.check:
            from sagecast_report.browser import BrowserMissing, ReportProblem, check_report

            try:
                result = check_report(out, out.with_name(out.stem + "_screenshot.png"))
            except (BrowserMissing, ReportProblem) as e:
                raise UserError(f"the report failed its browser check: {e}") from None
            print(f"checked in headless Chromium: {result['images']} images, screenshot {result['screenshot']}")

    run_cli(run, prog=ap.prog)


if __name__ == "__main__":
    main()
