"""The sagecast console scripts as the modules `python -m` runs: the one table `jobs/run_stage.sh` reads.

    python3 -S sagecast_pipeline/tools.py sagecast-stage1-train     # prints stage1_jea.train; exit 2 if unknown

Each module runs the same entry point as the console script of [project.scripts] in pyproject.toml (a test
checks the two agree). torchrun and MPI launchers start modules, not console scripts, hence the table.
"""

from __future__ import annotations

import sys

TOOLS = {
    "sagecast-synthetic": "data.synthetic",
    "sagecast-synthetic-stats": "data.synthetic.stats",
    "sagecast-prepare": "data.prepare",
    "sagecast-download": "data.sage.download",
    "sagecast-nodes": "data.sage.nodes",
    "sagecast-stage1-train": "stage1_jea.train",
    "sagecast-stage1-export": "stage1_jea.export",
    "sagecast-stage1-evaluate": "stage1_jea.evaluate",
    "sagecast-stage2-train": "stage2_forecast.train",
    "sagecast-stage2-evaluate": "stage2_forecast.evaluate",
    "sagecast-learning-curve": "stage2_forecast.learning_curve",
    "sagecast-report": "sagecast_report",
    "sagecast-compare": "sagecast_pipeline.compare",
    "sagecast-edge-export": "edge_export",
    "sagecast-edge": "edge_runtime",
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in TOOLS:
        print(f"unknown tool {' '.join(argv)!r}: one of {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    print(TOOLS[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
