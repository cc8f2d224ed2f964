"""Fixtures for stage-1 tests (a tiny trained stage-1 run)."""
