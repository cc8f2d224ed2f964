"""Synthetic sky generator speed: captures/s (one preset's RGB JPG + thermal CSV + truth row), vs the sky before
weather regimes.

    python -m benchmarks.run_all --only synthetic

Generator: W056, 6 h of 5-minute loops (576 captures), --size small, fault rate 0.01, each in a fresh process
(`python -m` style, imports and texture synthesis excluded by a warm-up run in that process). Baseline, measured
in the same run: the generator at commit REFERENCE (one texture, one wind, no truth oracles), extracted with
`git archive` (the row is left out where git or that commit is missing). Configurations alternate, twice each;
the faster run counts. Also the thermal CSV formatting alone per frame (np.savetxt vs the lookup table).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

import data.synthetic.generate as synthetic
from data.formats import format_thermal_csv
from data.synthetic.layout import fast_thermal_csv

REFERENCE = "f6d3ac7"  # last commit before issue 11's weather regimes, multi-scale field and oracles
ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(nodes=["W056"], start="2023-05-18", days=1, hours=6, interval_min=5, seed=0, size="small",
              fault_rate=0.01, progress=False)
TIMED = """
import sys, time
from data.synthetic.generate import generate
config, out, workers = {config!r}, sys.argv[1], int(sys.argv[2])
generate(out + "/warm", **{{**config, "hours": 0.25}})
t0 = time.perf_counter()
n = generate(out + "/timed", workers=workers, **config)["captures"]
print(n / (time.perf_counter() - t0), n)
"""


def _reference(tmp: Path) -> Path | None:
    """The REFERENCE tree's Python packages, or None without git or that commit."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", REFERENCE, "data", "sagecast_common"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(tmp / "reference", filter="data")
    return tmp / "reference"


def _rate(code_root: Path, out: Path, workers: int) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    res = subprocess.run([sys.executable, "-c", TIMED.format(config=CONFIG), str(out), str(workers)], env=env,
                         cwd=code_root, capture_output=True, text=True, check=True)
    rate, n = res.stdout.split()[-2:]
    return float(rate), int(n)


def _format_ms(fn, celsius: np.ndarray, repeat: int) -> float:
    fn(celsius)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(celsius)
    return (time.perf_counter() - t0) / repeat * 1e3


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = _reference(tmp)
        configs = {"now, 1 process": (ROOT, 1), "now, 2 processes": (ROOT, 2)}
        if reference is not None:
            configs = {f"before (commit {REFERENCE}), 1 process": (reference, 1), **configs}
        best, n = dict.fromkeys(configs, 0.0), 0
        for i in range(2):
            for name, (code, workers) in configs.items():
                rate, n = _rate(code, tmp / f"{i}-{len(name)}-{workers}", workers)
                best[name] = max(best[name], rate)
    base = next(iter(best.values()))
    lines = ["### Synthetic sky generator: captures/s", "", "`python -m benchmarks.run_all --only synthetic`", "",
             f"W056, {n} captures (6 h of 5-min loops × 8 presets), `--size small` (768×256 JPG + 112×84 CSV + "
             f"truth row), each configuration in its own process.", "",
             "| configuration | captures/s | vs first row |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {rate / base:.2f}× |" for name, rate in best.items()]
    if reference is None:
        lines += ["", f"(commit {REFERENCE} not available here: no before/after comparison)"]
    lines += ["", "| thermal CSV formatting, one frame | np.savetxt ms | lookup table ms | speed-up |",
              "|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for w, h in ((112, 84), (336, 252)):
        celsius = rng.uniform(-45, 5, (h, w))
        slow, quick = _format_ms(format_thermal_csv, celsius, 20), _format_ms(fast_thermal_csv, celsius, 20)
        lines.append(f"| {w}×{h} | {slow:.2f} | {quick:.2f} | {slow / quick:.1f}× |")
    spans = synthetic.day_spans("W056", dt.date(2023, 5, 18), 4)
    quick_default = (spans[-1][2] - spans[0][1]) // (5 * 60 * 10**9) * 8  # 98 h: the move adds 2
    rate = max(best["now, 1 process"], best["now, 2 processes"])
    lines += ["", f"At the better of the current rates the Makefile's quick default ({quick_default} captures: 4 "
              f"days, 5 min, small) takes about {quick_default / rate:.0f} s on this machine (shared and loaded "
              f"while measured: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)."]
    return "\n".join(lines)
