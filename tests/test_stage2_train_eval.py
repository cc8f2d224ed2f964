"""Stage-2 loop and evaluation: resume, non-finite stop, report on a hand-made case and end to end."""

import copy
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from sagecast_common.cli import UserError
from stage2_forecast import evaluate, samples, train
from tests.fixtures_stage2 import make_fake_stage1


def tiny(run, run_dir, **kw):
    width = "jepa_width" if kw.get("variant") == "jepa" else "width"  # the other variant's width is refused
    base = dict(stage1_run=str(run), run_dir=str(run_dir), epochs=2, batch_size=16, dropout=0.0, log_every=1,
                horizons_min=(5.0, 15.0), **{width: 32})
    return train.Config(**{**base, **kw})


def test_resume_continues_where_the_checkpoint_stopped(fake_stage1_run, tmp_path, monkeypatch):
    train.main(tiny(fake_stage1_run, tmp_path / "straight"))
    calls, real_gather = [0], samples.gather

    def dies_in_epoch_two(*a, **kw):
        # count training batches only (the loop's gathers are the ones asking for target images): epoch 1 is 2
        # batches, so the 4th is the 2nd batch of epoch 2
        calls[0] += "target_images" in kw
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real_gather(*a, **kw)

    monkeypatch.setattr(samples, "gather", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny(fake_stage1_run, tmp_path / "killed"))
    monkeypatch.setattr(samples, "gather", real_gather)
    assert torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True)["epoch"] == 1
    out = train.main(tiny(fake_stage1_run, tmp_path / "killed"))
    assert out["epoch"] == 2
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert (tmp_path / "killed" / "loss.png").exists() and (tmp_path / "killed" / "config.json").exists()


def test_non_finite_loss_stops(fake_stage1_run, tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite"):
        train.main(tiny(fake_stage1_run, tmp_path, lr=1e30, warmup_steps=0, epochs=3))


def moving_table(n_scans=24):
    """One test day; the embedding of preset p at scan s is one-hot e[(p - s) mod 8]: clouds move one preset
    per scan, so the future at p after k scans is what preset p - k shows now."""
    P = 8
    s, p = np.meshgrid(np.arange(n_scans), np.arange(P), indexing="ij")
    z = np.eye(P, dtype=np.float32)[(p - s) % P]
    pad = lambda a, fill: np.concatenate([a, np.full((1,) + a.shape[1:], fill, a.dtype)])  # noqa: E731
    t = pd.Timestamp("2023-06-03 16:00", tz="UTC").value + np.arange(n_scans) * 300 * 10**9
    return samples.ScanTable(
        vsn=pad(np.array(["W056"] * n_scans, object), ""), time_ns=pad(t, 0), day=pad(np.full(n_scans, 7), -1),
        split=pad(np.array(["test"] * n_scans, object), ""), sun_elev=pad(np.full(n_scans, 40, np.float32), 0),
        solar_hour=pad(np.full(n_scans, 9, np.float32), 0),
        location=pad(np.array(["32.7,-117.2"] * n_scans, object), ""), present=pad(np.ones((n_scans, P), bool), False),
        is_day=pad(np.ones((n_scans, P), bool), False), emb=pad(z, 0), rows=pad(np.zeros((n_scans, P), np.int64), -1),
        cloud=pad(np.zeros((n_scans, P), np.float32), np.nan), prepared_dir="", z=pad(z, 0))


def test_evaluation_on_a_hand_made_shift_case():
    table = moving_table()
    win = samples.build_windows(table, horizons_min=(5.0, 15.0), context_scans=1, step_min=5.0, split="test")
    b = samples.gather(table, win, np.arange(len(win)))
    true, mask = b["tgt_z"].numpy(), b["tgt_mask"].numpy()
    now = b["ctx_z"][:, 0].numpy()
    persist = np.repeat(now[:, None], 2, axis=1)
    shift = np.stack([np.roll(now, k, axis=1) for k in (1, 3)], axis=1)  # preset p takes p - k's embedding
    scores = {}
    for name, pred in (("persistence", persist), ("shift", shift)):
        ranks = evaluate.retrieval_ranks(pred, table, win, mask)
        scores[name] = evaluate.score(pred, true, mask, ranks, None, None)
    evaluate.with_skill(scores["shift"], scores["persistence"])
    evaluate.with_skill(scores["persistence"], scores["persistence"])
    assert [scores["persistence"][h]["n"] for h in (0, 1)] == [23 * 8, 21 * 8]
    for h in (0, 1):
        # Two different one-hots in 8 dims: squared error 2 over 8 dims, cosine 0. Each vector appears
        # 24/8 = 3 times per preset per day, all at distance 0 from the persisted one: rank 3.
        assert scores["persistence"][h]["mse"] == pytest.approx(0.25)
        assert scores["persistence"][h]["cosine"] == pytest.approx(0.0)
        assert scores["persistence"][h]["top1"] == 0.0 and scores["persistence"][h]["top5"] == 1.0
        assert scores["persistence"][h]["skill_vs_persistence"] == 0.0
        assert scores["shift"][h] == pytest.approx({"n": scores["persistence"][h]["n"], "mse": 0.0, "cosine": 1.0,
                                                    "top1": 1.0, "top5": 1.0, "cloud_fraction_mae": None,
                                                    "skill_vs_persistence": 1.0})
    assert evaluate.rankme(np.eye(8)) == pytest.approx(7.0, rel=1e-4)  # centred: one direction is the mean


@pytest.mark.slow
def test_train_both_variants_and_report(fake_stage1_run, tmp_path):
    for variant in ("detr", "jepa"):
        train.main(tiny(fake_stage1_run, tmp_path / variant, variant=variant, epochs=1,
                        horizons_min=(5.0, 15.0, 30.0, 60.0)))
    report = evaluate.evaluate(fake_stage1_run, [tmp_path / "detr", tmp_path / "jepa"], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["n_test"] == report["n_test"] > 0
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "skill_vs_horizon.png").exists()
    assert set(report["variants"]) == {"detr", "jepa", "persistence", "smart_persistence", "damped_anomaly",
                                       "climatology", "ridge"}
    keys = {"mse", "cosine", "skill_vs_persistence", "top1", "top5", "cloud_fraction_mae", "skill_ci",
            "skill_vs_smart", "skill_vs_smart_ci"}
    for per_h in report["variants"].values():
        assert list(per_h) == ["5", "15", "30", "60"] and all(keys <= set(m) for m in per_h.values())
    assert all(m["skill_vs_persistence"] == 0.0 for m in report["variants"]["persistence"].values())
    # The fake sky is linear advection of the embeddings' source field: the ridge baseline must see it.
    assert report["variants"]["ridge"]["15"]["skill_vs_persistence"] > 0.5
    for per_h in report["variants"].values():
        for m in per_h.values():
            assert m["skill_ci"][0] - 1e-9 <= m["skill_vs_persistence"] <= m["skill_ci"][1] + 1e-9
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert ("detr", "jepa") in pairs and ("detr", "damped_anomaly") in pairs
    assert not any(c["distinguishable"] for c in report["comparisons"])  # one test day: nothing to resample
    assert set(report["cloud_fraction"]) >= {"cf_persistence", "cf_preset_mean", "detr"}
    assert "Which differences are distinguishable" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_end_to_end_on_a_real_tiny_stage1_run(tiny_stage1_run, tmp_path):
    """Stage 2 reads only the files a real stage-1 run wrote (embeddings, encoders, probe, prepared dir)."""
    for variant in ("detr", "jepa"):  # the tiny data set scans hourly
        train.main(tiny(tiny_stage1_run, tmp_path / variant, variant=variant, epochs=1, batch_size=8,
                        horizons_min=(60.0, 120.0), context_scans=2))
    report = evaluate.evaluate(tiny_stage1_run, [tmp_path / "detr", tmp_path / "jepa"], tmp_path / "out")
    assert report["n_test"] > 0 and report["cloud_fraction_probe"]
    assert all(m["skill_vs_persistence"] == 0.0 for m in report["variants"]["persistence"].values())


def test_ema_target_trains_with_variance_covariance_and_tracks_the_encoder(fake_stage1_run, tmp_path):
    from sagecast_common.encoders import load_encoders

    out = train.main(tiny(fake_stage1_run, tmp_path, variant="jepa", target="ema", finetune=True, epochs=1,
                          ema_momentum=0.5))
    assert out["epoch"] == 1
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    logged = [r for r in (json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines())
              if "var" in r]
    assert logged and all(np.isfinite([r["var"], r["cov"], r["loss"]]).all() for r in logged)
    start, _ = load_encoders(fake_stage1_run / "encoders.pt")
    key = next(k for k, v in ckpt["ema"].items() if v.is_floating_point() and v.ndim > 1)
    name, param = key.split(".", 1)
    initial = start[name].state_dict()[param]
    tuned = ckpt["model"][f"encoders.{key}"]
    ema = ckpt["ema"][key]
    # The fine-tuned encoder moved; the EMA copy moved toward it but lags behind.
    assert not torch.equal(tuned, initial)
    assert 0 < (ema - initial).norm() < (tuned - initial).norm()


def test_held_out_evaluation_on_a_second_prepared_folder(fake_stage1_run, tmp_path):  # noqa: F811
    other = make_fake_stage1(tmp_path / "other", seed=1)  # another sky, the same stage-1 encoders
    train.main(tiny(fake_stage1_run, tmp_path / "detr", epochs=1))
    report = evaluate.evaluate(fake_stage1_run, [tmp_path / "detr"], tmp_path / "out", eval_stage1_run=other,
                               n_boot=50)
    assert report["eval"] == {"stage1_run": str(other), "held_out": True, "split": "all", "motion": None}
    table = samples.load_scan_table(other)
    every_day = samples.build_windows(table, horizons_min=(5.0, 15.0), context_scans=3)
    assert report["n_test"] == len(every_day) and len(report["per_day"]) == 3  # all days of the other folder
    assert set(report["days_per_split_per_location"]) == {"train_data", "eval_data"}
    assert report["variants"]["persistence"]["5"]["skill_vs_persistence"] == 0.0
    assert "held-out" in (tmp_path / "out" / "report.md").read_text()


def test_ema_target_without_fine_tuning_is_a_user_error(fake_stage1_run, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="target=ema needs finetune=true"):  # the CLI turns it into exit 2
        train.main(tiny(fake_stage1_run, tmp_path, variant="jepa", target="ema", finetune=False))


def test_ema_update_follows_parameters_and_batchnorm_buffers():
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = copy.deepcopy(online)
    online.train()(torch.randn(16, 2) * 3 + 5)  # moves the running statistics
    with torch.no_grad():
        online[0].weight.add_(1.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    train.ema_update(ema, online, momentum=0.75)
    for k, v in ema.state_dict().items():
        target = online.state_dict()[k]
        expected = before[k] * 0.75 + target * 0.25 if v.is_floating_point() else target
        torch.testing.assert_close(v, expected.to(v.dtype))
    assert not torch.equal(ema[1].running_mean, before["1.running_mean"])


def test_ridge_start_trains_and_evaluates_from_the_ridge_forecast(fake_stage1_run, tmp_path):
    from stage2_forecast import baselines

    cfg = tiny(fake_stage1_run, tmp_path / "detr", residual_base="ridge", epochs=1)
    train.main(cfg)
    ckpt = torch.load(tmp_path / "detr" / "ckpt.pt", weights_only=True)
    # Its first best-on-val candidate is the untrained model, i.e. the ridge forecast on val.
    table, _, _, wins, _, _ = train.load_data(cfg)
    b = samples.gather(table, wins["val"], np.arange(len(wins["val"])))
    start = baselines.ridge_start(table, wins)[0]["val"]
    m = b["tgt_mask"].numpy()
    ridge_val = (((start - b["tgt_z"].numpy()) ** 2).mean(-1) * m).sum() / m.sum()
    assert ckpt["best_val"] <= ridge_val + 1e-6
    # Evaluation adds the run's output to the same ridge: an untrained copy scores exactly the ridge baseline.
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    ckpt["best_model"] = train.build_model(cfg, ckpt["mean"], ckpt["std"]).state_dict()
    torch.save(ckpt, untrained / "ckpt.pt")
    # training kept its ridge in the stage-1 run's cache; evaluation finds it there under the same key
    cache = train.ridge_cache(cfg, table)
    key = baselines.windows_key(wins)
    assert cache.parent == fake_stage1_run / "ridge_cache"
    assert {f"fits-{key}.npz", f"start-{key}.npz"} <= set(os.listdir(cache)), os.listdir(cache)
    before = sorted((fake_stage1_run / "ridge_cache").iterdir())
    report = evaluate.evaluate(fake_stage1_run, [untrained], tmp_path / "out", n_boot=20)
    assert sorted((fake_stage1_run / "ridge_cache").iterdir()) == before
    for h in ("5", "15"):
        assert report["variants"]["detr"][h]["mse"] == pytest.approx(report["variants"]["ridge"][h]["mse"], rel=1e-5)
        assert report["variants"]["detr"][h]["mse"] != pytest.approx(report["variants"]["damped_anomaly"][h]["mse"])


def test_auto_start_is_the_baseline_with_the_lower_val_mse(fake_stage1_run, tmp_path):
    from stage2_forecast import baselines

    train.main(tiny(fake_stage1_run, tmp_path / "detr", epochs=1))  # residual_base=auto, the default
    saved = json.loads((tmp_path / "detr" / "config.json").read_text())["residual_base"]
    cfg = tiny(fake_stage1_run, tmp_path / "x")
    table, _, _, wins, clim, damping = train.load_data(cfg)
    b = samples.gather(table, wins["val"], np.arange(len(wins["val"])), clim=clim)
    m, true = b["tgt_mask"].numpy(), b["tgt_z"].numpy()
    mse = {name: (((pred - true) ** 2).mean(-1) * m).sum() / m.sum() for name, pred in
           (("ridge", baselines.ridge_start(table, wins)[0]["val"]), ("damped", baselines.damped_forecast(b, damping)))}
    assert mse["ridge"] != pytest.approx(mse["damped"], rel=1e-3)
    assert saved == min(mse, key=mse.get)
    assert train.load_run(tmp_path / "detr")[0].residual_base == saved  # evaluation rebuilds the chosen start
