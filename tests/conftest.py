"""Shared pytest set-up. Fixtures live in one module per area, registered here."""

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_stage1", "tests.fixtures_stage2", "tests.fixtures_edge"]
