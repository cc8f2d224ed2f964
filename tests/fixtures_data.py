"""Fixtures for data tests (tiny synthetic raw + prepared sets)."""
