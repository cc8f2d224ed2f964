"""Run every benchmark and rewrite BENCHMARKS.md: `python -m benchmarks.run_all --out BENCHMARKS.md`.

Each `benchmarks/bench_*.py` exposes `run() -> str`, a Markdown section (heading, command, table) measured in
that call; ratios are always against a baseline measured in the same run. `--only NAME` runs one.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import time
from pathlib import Path

import benchmarks
from sagecast_common.runio import atomic_write_text, environment_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--only", action="append", help="run only bench_NAME (repeatable); keeps the other sections")
    args = ap.parse_args()
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n.removeprefix("bench_") in args.only or n in args.only]
    out = Path(args.out)
    sections = _read_sections(out)
    env = environment_info()
    for name in names:
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        text = importlib.import_module(f"benchmarks.{name}").run().strip()
        cpu = platform.processor() or platform.machine()
        stamp = f"_{name}: {time.perf_counter() - t0:.0f} s wall; {cpu}, torch {env['versions']['torch']}, " \
                f"{time.strftime('%Y-%m-%d')}_"
        sections[name] = f"{text}\n\n{stamp}"
        print(text, flush=True)
    body = "\n\n".join(f"<!-- {k} -->\n{v}" for k, v in sorted(sections.items()))
    header = ("# Benchmarks\n\nMade by `make bench` (= `python -m benchmarks.run_all --out BENCHMARKS.md`) unless a "
              "section says otherwise. One section per `benchmarks/bench_*.py`; ratios compare against a baseline "
              "measured in the same run.\n\n")
    atomic_write_text(out, header + body + "\n")


def _read_sections(path: Path) -> dict[str, str]:
    """BENCHMARKS.md split at its `<!-- name -->` markers; a rerun replaces only the bench_* sections it ran."""
    if not path.exists():
        return {}
    sections, key, buf = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith("<!-- ") and line.endswith("-->"):  # bench_* sections and hand-written ones alike
            if key:
                sections[key] = "\n".join(buf).strip()
            key, buf = line[5:-4].strip(), []
        elif key:
            buf.append(line)
    if key:
        sections[key] = "\n".join(buf).strip()
    return sections


if __name__ == "__main__":
    main()
