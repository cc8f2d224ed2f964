"""Fixtures for the edge tests: a tiny stage-2 run on `tiny_stage1_run` and its exported model folder.

`tiny_raw` has hourly loops, so the horizons are 60 and 120 min (a horizon must exceed the half-step tolerance).
"""

from __future__ import annotations

import pytest

EDGE_STAGE2 = {"variant": "detr", "epochs": 1, "batch_size": 8, "width": 16, "depth": 1, "heads": 2, "dropout": 0.0,
               "horizons_min": (60.0, 120.0), "context_scans": 2, "log_every": 1, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_stage2_run(tiny_stage1_run, tmp_path_factory):
    from stage2_forecast import train

    run = tmp_path_factory.mktemp("edge_stage2") / "detr"
    train.main(train.Config(**{**EDGE_STAGE2, "stage1_run": str(tiny_stage1_run), "run_dir": str(run)}))
    return run


@pytest.fixture(scope="session")
def tiny_edge_model(tiny_stage1_run, tiny_stage2_run, tmp_path_factory):
    """The exported model folder of the tiny runs."""
    from edge_export.export import export

    return export(tiny_stage1_run, tiny_stage2_run, tmp_path_factory.mktemp("edge") / "model")
