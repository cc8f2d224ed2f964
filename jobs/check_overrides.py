"""Parse the train commands of a job the way the job will, on the login node, before they wait in a queue.

    python jobs/check_overrides.py '[["stage1_jea.train", ["--preset", "quick", "epochs=2"]]]'

jobs/submit runs it with the project's interpreter (its own, or $PYTHON) on the train steps it is about to
submit: each module's Config and PRESETS through sagecast_common.config.parse_config and reject_unused, as
sagecast_common.training.run_training_cli does at the start of the job. Exits 0 when every command parses;
2 with `TOOL: error: ...` on one line for the first that does not; 3 when the project does not import here
(no project environment on this node: jobs/submit then leaves the check to the job). It imports torch (the
train modules do), which takes a few seconds.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

EXIT_UNCHECKED = 3


def main(commands: list[tuple[str, list[str]]]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout jobs/submit runs from
    try:
        from sagecast_common.cli import UserError
        from sagecast_common.config import parse_config, reject_unused
        modules = [importlib.import_module(module) for module, _ in commands]
    except ImportError as e:
        print(f"the project does not import with {sys.executable}: {e}", file=sys.stderr)
        return EXIT_UNCHECKED
    for m, (_, argv) in zip(modules, commands, strict=True):
        try:
            reject_unused(parse_config(m.Config, argv, presets=m.PRESETS, prog=m.PROG))
        except UserError as e:
            print(f"{m.PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
