"""sagecast-edge-export: the model folder describes itself, and onnxruntime reproduces torch."""

import json

import numpy as np
import pytest

from edge_export import export as edge_export
from sagecast_common.cli import UserError
from sagecast_common.runio import file_sha256


def test_manifest_lists_every_file_with_its_hash(tiny_edge_model):
    manifest = json.loads((tiny_edge_model / "manifest.json").read_text())
    assert set(manifest["files"]) == {"encoder_rgb.onnx", "encoder_thermal.onnx", "forecaster.onnx", "norm.json",
                                      "climatology.npy", "probe.json"}
    for name, digest in manifest["files"].items():
        assert file_sha256(tiny_edge_model / name) == digest
    assert manifest["horizons_min"] == [60.0, 120.0] and manifest["context_scans"] == 2
    assert manifest["image_size"] == 32 and manifest["node"] == "W056"
    for part in ("encoder_rgb", "encoder_thermal", "forecaster"):
        assert manifest["parity"][part]["max_ratio"] <= 1.0


def test_parity_check_refuses_outputs_beyond_the_tolerance():
    want = np.ones((2, 3))
    assert edge_export.check_parity("x", want + 1e-6, want)["max_ratio"] < 1
    with pytest.raises(UserError, match="does not reproduce"):
        edge_export.check_parity("x", want + 1e-2, want)
    with pytest.raises(UserError, match="does not reproduce"):
        edge_export.check_parity("x", want * np.nan, want)


def test_export_names_the_missing_step(tiny_stage1_run, tmp_path):
    with pytest.raises(UserError, match="sagecast-stage2-train"):
        edge_export.export(tiny_stage1_run, tmp_path / "no_stage2", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        edge_export.main(["--stage1", str(tmp_path), "--stage2", str(tmp_path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "encoders.pt" in err[0]


def test_jepa_run_exports_and_forecasts(tiny_stage1_run, tmp_path):
    """The jepa predictor reads only the scan at t (its graph has no ctx_dt input); the runtime feeds it anyway."""
    from edge_runtime.model import EdgeModel
    from stage2_forecast import train
    from tests.fixtures_edge import EDGE_STAGE2

    run = tmp_path / "jepa"
    detr_only = {k: v for k, v in EDGE_STAGE2.items() if k != "width"}  # jepa refuses the detr width
    train.main(train.Config(**{**detr_only, "variant": "jepa", "jepa_width": 16, "residual_base": "damped",
                               "stage1_run": str(tiny_stage1_run), "run_dir": str(run)}))
    out = edge_export.export(tiny_stage1_run, run, tmp_path / "model")
    model = EdgeModel(out)
    T, P, D = model.manifest["context_scans"], len(model.presets), model.mean.size
    z = np.random.default_rng(0).standard_normal((T, P, D)).astype(np.float32)
    forecast = model.forecast(z, np.ones((T, P), bool), np.array([0.0, -60.0]), 12.0, 40.0)
    assert forecast.shape == (len(model.horizons), P, D) and np.isfinite(forecast).all()
