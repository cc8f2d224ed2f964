"""The command-line contract every sagecast tool follows.

`--help` lists every option with a one-line help and its default; a user error (bad value, missing input)
exits 2 with one line `PROG: error: ...` and no traceback; a missing input names the command that makes it.
Console scripts are `sagecast-<tool>` ([project.scripts] in pyproject.toml); `python -m MODULE` works too.

    parser = make_parser("sagecast-stage1-evaluate", __doc__)
    ...
    run_cli(lambda: main(args), prog="sagecast-stage1-evaluate")
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2  # a mistake the user can fix: argparse's convention
EXIT_INCOMPLETE = 75  # EX_TEMPFAIL: checkpointed but not finished; a batch dependency (afterok) must not fire


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message as one line and exits 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show (required, None, or said in the help)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, exit 2 (argparse would also print the usage)."""

    def error(self, message: str):
        fail(self.prog, f"{message} (see --help)")


def make_parser(prog: str, description: str | None) -> Parser:
    return Parser(prog=prog, description=description, formatter_class=_Formatter)


def fail(prog: str, message: str):
    first = " ".join(str(message).split("\n")[0].split()) or "error"
    print(f"{prog}: error: {first}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def require(path: str | Path, *, made_by: str, what: str | None = None) -> Path:
    """`path` if it exists, else a UserError naming the command that makes it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what or path} not found ({path}): make it with `{made_by}`")
    return path


def read_json(path: str | Path, *, made_by: str, what: str | None = None):
    """The JSON in `path`; a missing, truncated or garbage file is a UserError naming it and the command that
    makes it again."""
    path = require(path, made_by=made_by, what=what)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what or path} is unreadable ({path}: {e}): make it again with `{made_by}`") from None


def run_cli(fn: Callable[[], int | None], *, prog: str) -> None:
    """Call `fn`; exit with its status when non-zero. A UserError (config errors included) becomes one line,
    exit 2."""
    try:
        status = fn()
    except UserError as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    if status:
        sys.exit(status)
