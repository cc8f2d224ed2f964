"""Tests that start a real system program (Chromium, a scheduler, a message broker) find it here.

`needs_program("chromium", package="chromium")` returns the program's path. Where it is absent the test skips
with one line naming the Debian package, so `make test` passes on a machine that has only Python; when `CI` is
set it fails instead, because `.ci/run` installs every such package and a missing one means a broken install.
"""

from __future__ import annotations

import os
import shutil

import pytest


def missing(package: str, what: str) -> None:
    """Skip (locally) or fail (CI set) for a missing Debian package; `what` says which program was not found."""
    reason = f"{what} not found: apt-get install -y {package}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def needs_program(name: str, *, package: str) -> str:
    """The path of `name` on PATH, else skip or fail naming `package` (see `missing`)."""
    path = shutil.which(name)
    if path is None:
        missing(package, name)
    return path
