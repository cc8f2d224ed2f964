"""Cost of one synthetic day: generating it (all loops vs `--daylight-only`, `--size small` vs `tiny`) and
preparing it at 32 px, all measured in one run on this machine.

    python -m benchmarks.run_all --only synthetic_day

Day: W056's local day 2023-05-18 (Lemont, 24 h, 14.8 h of daylight), 5-minute loops of the 8 sky presets, fault
rate 0.01, one process (`--workers 1`). Each generation runs in a fresh process (`python -m` style) after a
quarter-hour warm-up run in that process, so imports and texture synthesis are not counted; each preparation is
`python -m data.prepare --size 32 --workers 1` on the day just generated, timed as a whole command. Configurations
alternate, twice each; the faster run counts. The first row is the baseline the ratios compare against.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAY = dict(nodes=["W056"], start="2023-05-18", days=1, interval_min=5, seed=0, fault_rate=0.01, progress=False)
CONFIGS = {"small, all loops (default)": dict(size="small"),
           "small, --daylight-only": dict(size="small", daylight_only=True),
           "tiny, all loops": dict(size="tiny"),
           "tiny, --daylight-only": dict(size="tiny", daylight_only=True)}
TIMED = """
import sys, time
from data.synthetic.generate import generate
config, out = {config!r}, sys.argv[1]
generate(out + "/warm", **{{**config, "hours": 0.25}})
t0 = time.perf_counter()
n = generate(out + "/timed", **config)["captures"]
print(time.perf_counter() - t0, n)
"""


def _generate(config: dict, out: Path) -> tuple[float, int]:
    res = subprocess.run([sys.executable, "-c", TIMED.format(config={**DAY, **config}), str(out)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    seconds, n = res.stdout.split()[-2:]
    return float(seconds), int(n)


def _prepare(raw: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "data.prepare", "--raw", str(raw), "--out", str(out), "--size", "32",
                    "--workers", "1", "--no-progress"], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - t0


def run() -> str:
    gen, prep, captures = dict.fromkeys(CONFIGS, float("inf")), dict.fromkeys(CONFIGS, float("inf")), {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            for k, (name, config) in enumerate(CONFIGS.items()):
                out = Path(tmp) / f"{i}-{k}"
                seconds, captures[name] = _generate(config, out)
                gen[name] = min(gen[name], seconds)
                prep[name] = min(prep[name], _prepare(out / "timed", out / "prepared"))
    base = next(iter(CONFIGS))
    lines = ["### Synthetic sky: cost of one day (generate, prepare at 32 px)", "",
             "`python -m benchmarks.run_all --only synthetic_day`", "",
             "W056, local day 2023-05-18 (24 h, 14.8 h of sun), 5-min loops × 8 sky presets, one process; "
             "generate = `python -m data.synthetic … --workers 1` without imports and texture synthesis; "
             "prepare = the whole `python -m data.prepare --size 32 --workers 1` command.", "",
             "| configuration | captures | generate s/day | vs first row | prepare s/day | vs first row |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {captures[name]} | {gen[name]:.1f} | {gen[name] / gen[base]:.2f}× | {prep[name]:.1f} | "
              f"{prep[name] / prep[base]:.2f}× |" for name in CONFIGS]
    lines += ["", f"Machine shared and loaded while measured (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
              f"cores): compare rows with each other, not with other sections. With the horizon row a loop holds 16 "
              f"presets, twice the captures of a day (not measured here)."]
    return "\n".join(lines)
