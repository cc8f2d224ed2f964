"""The skip-or-fail rule for tests that need a system program."""

from __future__ import annotations

import pytest

from tests.system_programs import needs_program


def test_a_present_program_is_returned():
    assert needs_program("sh", package="dash").endswith("sh")


def test_an_absent_program_skips_naming_the_package_without_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y no-such-package"):
        needs_program("no-such-program-sagecast", package="no-such-package")


def test_an_absent_program_fails_when_ci_is_set(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-package.*CI is set"):
        needs_program("no-such-program-sagecast", package="no-such-package")
