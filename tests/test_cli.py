"""The command-line contract: --help lists every option with help and default under the console-script name;
user errors exit 2 with one line naming the fix (the cases a new user hit, issue "one CLI contract")."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from data.prepare import run as prepare_run
from data.sage import download, nodes
from data.synthetic import generate
from data.synthetic import stats as synthetic_stats
from sagecast_common import cli as cli_module
from sagecast_common.config import ConfigError, parse_config, reject_unused
from sagecast_pipeline import compare as pipeline_compare
from sagecast_report import browser as report_browser
from sagecast_report import build as report
from stage1_jea import evaluate as s1_evaluate
from stage1_jea import export as s1_export
from stage1_jea import train as s1_train
from stage2_forecast import evaluate as s2_evaluate
from stage2_forecast import train as s2_train


def one_error_line(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("train, argv, expected", [
    (s2_train, ["loss=l1"], "loss='l1': expected one of 'mse', 'smooth_l1'"),
    (s1_train, ["device=gpu"], "device='gpu': expected one of 'auto', 'cpu', 'cuda'"),
    (s2_train, ["--device", "tpu"], "device='tpu': expected one of 'auto', 'cpu', 'cuda'"),
    (s1_train, ["epochs=0"], "epochs=0: must be >= 1"),
    (s2_train, ["--epochs", "0"], "epochs=0: must be >= 1"),
    (s1_train, ["batch_size=0"], "batch_size=0: must be >= 1"),
    (s2_train, ["lr=0"], "lr=0.0: must be > 0"),
    (s1_train, ["base_lr=-1"], "base_lr=-1.0: must be > 0"),
    (s1_train, ["epoch=3"], "unknown config key 'epoch': did you mean 'epochs'?"),
    (s2_train, ["--batchsize", "4"], "unknown config key 'batchsize': did you mean 'batch_size'?"),
    (s2_train, ["--variant", "vit"], "variant='vit': expected one of 'detr', 'jepa'"),
    (s1_train, ["optimizer=sgd"], "optimizer='sgd': expected one of 'lars', 'adamw'"),
    (s1_train, ["epochs", "3"], "cannot read argument 'epochs': use key=value or --key value"),
])
def test_training_config_errors_are_one_line_exit_2(capsys, train, argv, expected):
    line = one_error_line(capsys, train.cli, argv)
    assert line == f"{train.PROG}: error: {expected}" or line.startswith(f"{train.PROG}: error: {expected}")


@pytest.mark.parametrize("train, argv, expected", [
    (s2_train, ["--variant", "detr", "finetune=true"], "finetune=True would do nothing: variant=detr has no encoders"),
    (s2_train, ["residual=false", "residual_base=ridge"], "residual_base='ridge' would do nothing: residual=false"),
    (s2_train, ["--variant", "jepa", "ema_momentum=0.99"], "ema_momentum=0.99 would do nothing: they act only with "
                                                           "target=ema"),
    (s2_train, ["vc_weight=2"], "vc_weight=2.0 would do nothing: they act only with target=ema"),
    (s2_train, ["--variant", "jepa", "--preset", "quick", "width=96"], "width=96 would do nothing: it is the detr "
                                                                         "transformer's width"),
    (s2_train, ["jepa_width=32"], "jepa_width=32 would do nothing: it is the jepa predictor's width"),
    (s1_train, ["--preset", "quick", "trust_coefficient=0.01"], "trust_coefficient=0.01 would do nothing: it is "
                                                                "LARS's; optimizer=adamw"),
])
def test_options_that_would_do_nothing_are_one_line_exit_2(capsys, train, argv, expected):
    line = one_error_line(capsys, train.cli, argv)
    assert line.startswith(f"{train.PROG}: error: {expected}")


@pytest.mark.parametrize("variant", ["detr", "jepa"])
@pytest.mark.parametrize("preset", ["quick", "full"])
def test_presets_serve_both_variants(variant, preset):
    cfg = parse_config(s2_train.Config, ["--variant", variant, "--preset", preset], presets=s2_train.PRESETS,
                                prog="t")
    reject_unused(cfg)  # what main() checks again
    width, other = ("width", "jepa_width") if variant == "detr" else ("jepa_width", "width")
    assert getattr(cfg, width) == s2_train.PRESETS[preset][width]  # the variant's own width from the preset
    assert getattr(cfg, other) == s2_train.Config.__dataclass_fields__[other].default  # the other's left at default
    s1 = parse_config(s1_train.Config, ["--preset", preset], presets=s1_train.PRESETS, prog="t")
    reject_unused(s1)


def test_main_refuses_a_changed_option_that_would_do_nothing(tmp_path):
    with pytest.raises(ConfigError, match="width=64 would do nothing"):
        s2_train.main(s2_train.Config(variant="jepa", width=64, stage1_run=str(tmp_path), run_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_key_value_and_flag_forms_are_the_same():
    a = parse_config(s1_train.Config, ["--epochs", "3", "--base-lr", "0.5", "--force-schedule"],
                              presets=s1_train.PRESETS, prog="t")
    b = parse_config(s1_train.Config, ["epochs=3", "base_lr=0.5", "force_schedule=true"],
                              presets=s1_train.PRESETS, prog="t")
    assert a == b and a.epochs == 3 and a.force_schedule
    cfg = parse_config(s2_train.Config, ["--variant", "jepa", "--preset", "quick", "--day-only", "false"],
                                presets=s2_train.PRESETS, prog="t")
    assert (cfg.variant, cfg.epochs, cfg.day_only) == ("jepa", 40, False)


@pytest.mark.parametrize("train", [s1_train, s2_train])
def test_training_help_lists_every_key_with_help_and_default(capsys, train):
    with pytest.raises(SystemExit) as e:
        train.cli(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: {train.PROG} ")
    for f in train.Config.__dataclass_fields__.values():
        (line,) = [x for x in out.splitlines() if x.startswith(f"  --{f.name.replace('_', '-')}  ")]
        assert f.metadata["help"] and f.metadata["help"] in line and f"(default: {f.default!r})" in line
    if train is s2_train:
        assert "--variant  [one of 'detr', 'jepa']" in out


def test_missing_inputs_name_the_command_that_makes_them(capsys, tmp_path):
    nope = str(tmp_path / "nope")
    line = one_error_line(capsys, s1_evaluate.main, ["--run", nope])
    assert "stage-1 embeddings not found" in line and f"`sagecast-stage1-export --run {nope}`" in line
    line = one_error_line(capsys, s1_export.main, ["--run", nope])
    assert f"`sagecast-stage1-train run_dir={nope}`" in line
    line = one_error_line(capsys, s2_train.cli, [f"stage1_run={nope}", f"run_dir={tmp_path / 's2'}", "device=cpu"])
    assert f"`sagecast-stage1-export --run {nope}`" in line
    line = one_error_line(capsys, s1_train.cli, [f"prepared={nope}", f"run_dir={tmp_path / 's1'}", "device=cpu"])
    assert "prepared index not found" in line and "`sagecast-prepare`" in line
    line = one_error_line(capsys, s2_evaluate.main, ["--stage1-run", nope, "--runs", nope, "--out", nope])
    assert f"`sagecast-stage2-train run_dir={nope}`" in line
    line = one_error_line(capsys, s2_evaluate.main, ["--stage1-run", nope, "--out", nope])
    assert "stage-1 embeddings not found" in line and f"`sagecast-stage1-export --run {nope}`" in line
    line = one_error_line(capsys, report.main, ["--runs", nope])
    assert "prepared index not found" in line and "`make data" in line


def test_damaged_stage1_files_are_one_line_errors_naming_them(capsys, tmp_path):
    run = tmp_path / "s1"
    run.mkdir()
    (run / "encoders.pt").write_bytes(b"\x80garbage")  # a truncated pickle
    (run / "embeddings.parquet").write_bytes(b"PAR1 not a parquet file")
    (run / "embeddings.json").write_text("{}")
    (run / "config.json").write_text('{"projector": ')  # torn
    line = one_error_line(capsys, s1_export.main, ["--run", str(run)])
    assert f"cannot read the stage-1 encoders {run / 'encoders.pt'}" in line
    line = one_error_line(capsys, s2_train.cli, [f"stage1_run={run}", f"run_dir={tmp_path / 's2'}", "device=cpu"])
    assert f"{run / 'embeddings.parquet'} is unreadable" in line and "`sagecast-stage1-export --run" in line
    with pytest.raises(cli_module.UserError, match="stage-1 config is unreadable .*sagecast-stage1-train"):
        cli_module.read_json(run / "config.json", made_by=f"sagecast-stage1-train run_dir={run}",
                             what="stage-1 config")


ARGPARSE_TOOLS = [(s1_export, "sagecast-stage1-export"), (s1_evaluate, "sagecast-stage1-evaluate"),
                  (s2_evaluate, "sagecast-stage2-evaluate"), (generate, "sagecast-synthetic"),
                  (prepare_run, "sagecast-prepare"), (download, "sagecast-download"), (nodes, "sagecast-nodes"),
                  (report, "sagecast-report"), (report_browser, "python -m sagecast_report.browser"),
                  (pipeline_compare, "sagecast-compare"),
                  (synthetic_stats, "sagecast-synthetic-stats")]


@pytest.mark.parametrize("module, prog", ARGPARSE_TOOLS)
def test_every_option_has_help_and_the_console_script_name(monkeypatch, capsys, module, prog):
    made = []

    def recording(*args, **kwargs):
        made.append(cli_module.make_parser(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, "make_parser", recording)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {prog} ")
    parsers = [made[0]] + [p for a in made[0]._actions if isinstance(a, argparse._SubParsersAction)
                           for p in a.choices.values()]
    for parser in parsers:
        for action in parser._actions:
            assert action.help, f"{prog}: {action.option_strings or action.dest} has no help"
    bad = one_error_line(capsys, module.main, ["--no-such-option"])
    assert bad.startswith(f"{prog}: error: ") and bad.endswith("(see --help)")


def test_python_dash_m_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "stage1_jea.train", "device=gpu"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "sagecast-stage1-train: error: device='gpu': expected one of 'auto', 'cpu', 'cuda'"]
