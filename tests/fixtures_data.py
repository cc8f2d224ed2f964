"""Fixtures for data tests (tiny synthetic raw + prepared sets)."""


import pytest


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """A tiny synthetic raw dir: W056, local days 2023-05-18..20 (spans its move), hourly loops, no faults."""
    from data.synthetic.generate import generate

    out = tmp_path_factory.mktemp("tiny_raw")
    generate(out, nodes=["W056"], start="2023-05-18", days=3, interval_min=60, seed=0, size="small",
             fault_rate=0.0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tmp_path_factory):
    """`tiny_raw` prepared at size 32 (3 local days: one per split); in-process, no progress bar."""
    from data.prepare.run import prepare

    out = tmp_path_factory.mktemp("tiny_prepared")
    prepare(tiny_raw, out, size=32, workers=1, progress=False)
    return out
