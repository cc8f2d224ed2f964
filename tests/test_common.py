"""Contracts of sagecast_common: typed config parsing, atomic writes, encoder save/load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest
import torch

from sagecast_common.config import ConfigError, build_config, config_to_dict, parse_config
from sagecast_common.encoders import build_encoder, encoder_kwargs, load_encoders, save_encoders
from sagecast_common.runio import JsonlLogger, atomic_path, atomic_write_json


@dataclass
class Cfg:
    """A config for tests."""

    epochs: int = 2
    lr: float = 0.1
    arch: str = "resnet18"
    horizons: tuple[int, ...] = (5, 15)
    compile: bool = False
    run_dir: str | None = None
    note: str = field(default="", metadata={"help": "free text"})


PRESETS = {"quick": {"epochs": 1, "horizons": [15]}, "full": {"epochs": 100, "lr": 1}}


def test_overrides_are_typed():
    cfg = parse_config(Cfg, ["--preset", "quick", "lr=0.5", "horizons=5,30,60", "compile=true", "run_dir=x"],
                       presets=PRESETS, prog="t")
    assert cfg == Cfg(epochs=1, lr=0.5, horizons=(5, 30, 60), compile=True, run_dir="x")


def test_preset_values_are_converted_and_cli_wins_over_preset():
    cfg = parse_config(Cfg, ["preset=full", "epochs=3"], presets=PRESETS, prog="t")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 3


def test_flag_form_sets_bool_and_none_parses():
    cfg = parse_config(Cfg, ["--compile", "run_dir=none"], presets=PRESETS, prog="t")
    assert cfg.compile is True and cfg.run_dir is None


@pytest.mark.parametrize("argv, message", [
    (["epochz=3"], "unknown config key"),
    (["epochs=three"], "expected int"),
    (["compile=maybe"], "expected true/false"),
    (["--preset", "huge"], "unknown preset"),
    (["justaword"], "key=value"),
])
def test_bad_arguments_fail_at_once(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(Cfg, argv, presets=PRESETS, prog="t")


def test_saved_config_round_trips_and_rejects_wrong_types():
    cfg = Cfg(horizons=(5, 60), run_dir="r")
    saved = json.loads(json.dumps(config_to_dict(cfg)))
    assert build_config(Cfg, saved) == cfg
    with pytest.raises(ConfigError, match="epochs"):
        build_config(Cfg, {**saved, "epochs": 1.5})


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--help"], presets=PRESETS, prog="prog")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ("epochs", "lr", "horizons", "note", "free text", "quick"):
        assert key in out


def test_atomic_path_leaves_old_file_when_block_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_jsonl_logger_appends(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    log.log({"step": 1, "loss": 2.5})
    log.log({"step": 2, "loss": torch.tensor(1.5).item()})
    assert [r["step"] for r in log.read()] == [1, 2]


def test_encoders_round_trip_without_the_training_code(tmp_path):
    torch.manual_seed(0)
    rgb = build_encoder("resnet10t", in_chans=3)
    thermal = build_encoder("vit_tiny_patch16_224", in_chans=1,
                            kwargs=encoder_kwargs("vit_tiny_patch16_224", img_size=32, patch_size=8))
    specs = {"rgb": (rgb, {"arch": "resnet10t", "in_chans": 3, "kwargs": {}}),
             "thermal": (thermal, {"arch": "vit_tiny_patch16_224", "in_chans": 1,
                                   "kwargs": encoder_kwargs("vit_tiny_patch16_224", img_size=32, patch_size=8)})}
    save_encoders(tmp_path / "enc.pt", specs, {"img_size": 32})
    loaded, meta = load_encoders(tmp_path / "enc.pt")
    assert meta == {"img_size": 32}
    x3, x1 = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    for m in (rgb, thermal, *loaded.values()):
        m.eval()
    with torch.no_grad():
        assert torch.equal(loaded["rgb"](x3), rgb(x3))
        assert torch.equal(loaded["thermal"](x1), thermal(x1))
        assert loaded["thermal"](x1).shape == (2, 192)
