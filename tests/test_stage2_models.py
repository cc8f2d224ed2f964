"""Stage-2 predictors: output shapes, the damped-anomaly baseline at initialisation, one step lowers the loss."""

import numpy as np
import pytest
import torch

from stage2_forecast import baselines, samples
from stage2_forecast.loss import forecast_loss, variance_covariance
from stage2_forecast.train import Config, build_model


@pytest.fixture(scope="module")
def data(fake_stage1_run):
    table = samples.load_scan_table(fake_stage1_run)
    mean, std = samples.standardise(table)
    win = samples.build_windows(table, context_scans=3, split="train")
    clim = baselines.fit_climatology(table)
    damping = baselines.fit_damping(samples.gather(table, win, np.arange(len(win)), clim=clim))
    batch = samples.gather(table, win, np.arange(8), images=True, clim=clim)
    return fake_stage1_run, table, mean, std, batch, damping


@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_untrained_model_is_the_damped_anomaly_baseline(data, variant):
    run, table, mean, std, batch, damping = data
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32,
                               residual_base="damped"), mean, std,
                        damping).eval()
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (8, 4, 8, 16) and torch.isfinite(out).all()
    # Zero-initialised head + residual from the closed-form fit: the untrained forecast is the baseline's.
    # For jepa this also checks that the frozen stage-1 encoders reproduce the exported embeddings.
    preds, fitted = baselines.forecasts(batch, batch)
    np.testing.assert_allclose(fitted["damping"], baselines.fit_damping(batch))
    expected = baselines.damped_forecast(batch, damping)
    assert np.abs(expected - preds["persistence"]).max() > 0.1  # the baseline is not plain persistence
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_untrained_model_with_the_ridge_start_is_the_batch_base(data, variant):
    run, table, mean, std, batch, damping = data
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, residual_base="ridge"),
                        mean, std, damping).eval()
    assert not model.damping.requires_grad  # unused: a DDP run would stop on a parameter without a gradient
    base = torch.randn_like(batch["tgt_z"])
    with torch.no_grad():
        torch.testing.assert_close(model({**batch, "base": base}), base)
        with pytest.raises(ValueError, match="ridge forecast in the batch"):
            model(batch)
    with pytest.raises(ValueError, match="resolved on val"):  # auto is the training loop's choice to make
        build_model(Config(variant=variant, stage1_run=str(run), residual_base="auto"), mean, std, damping)


@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(data, variant):
    run, table, mean, std, batch, damping = data
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, dropout=0.0,
                               residual_base="damped"),
                        mean, std, damping).train()
    encoders = list(model.encoders.parameters()) if variant == "jepa" else []
    frozen = [p.clone() for p in encoders]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(2):
        loss, terms = forecast_loss(model(batch), batch["tgt_z"], batch["tgt_mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and set(terms) == {"mse"}
    for before, after in zip(frozen, encoders, strict=True):
        assert torch.equal(before, after)  # frozen by default


def test_forecast_loss_counts_only_valid_slots():
    pred = torch.zeros(1, 2, 2, 3)
    target = torch.tensor([[[[1.0, 1, 1], [2, 2, 2]], [[3, 3, 3], [100, 100, 100]]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    loss, terms = forecast_loss(pred, target, mask)
    assert loss.item() == pytest.approx((1 + 4 + 9) / 3)
    loss, _ = forecast_loss(pred, target, mask, kind="smooth_l1")
    assert loss.item() == pytest.approx((0.5 + 1.5 + 2.5) / 3)


def test_variance_covariance_penalises_collapse_not_whitened_features():
    collapsed, _ = variance_covariance(torch.zeros(64, 4))
    assert collapsed.item() == pytest.approx(1.0, abs=0.02)  # std 0 → hinge 1 per dimension
    white = torch.tensor(np.kron(np.eye(4), np.ones((16, 1))) * 8.0, dtype=torch.float32)
    spread, terms = variance_covariance(white - white.mean(0))
    assert terms["var"] == 0.0 and terms["cov"] > 0
