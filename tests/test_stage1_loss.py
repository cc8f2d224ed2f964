"""Stage-1 loss, model, optimiser and schedule: hand computations and the 2-process gather equivalence."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from stage1_jea import vicreg_loss
from stage1_jea.model import TwoBranch, encoder_specs, projector
from stage1_jea.optim import build_optimizer


def _vicreg_by_hand(a: np.ndarray, b: np.ndarray, sim=25.0, std=25.0, cov=1.0):
    N, D = a.shape
    inv = sum((a[i, d] - b[i, d]) ** 2 for i in range(N) for d in range(D)) / (N * D)
    var_terms, cov_total = [], 0.0
    for x in (a, b):
        mean = [sum(x[i, d] for i in range(N)) / N for d in range(D)]
        c = [[sum((x[i, p] - mean[p]) * (x[i, q] - mean[q]) for i in range(N)) / (N - 1) for q in range(D)]
             for p in range(D)]
        var_terms.append(sum(max(0.0, 1 - math.sqrt(c[d][d] + 1e-4)) for d in range(D)) / D)
        cov_total += sum(c[p][q] ** 2 for p in range(D) for q in range(D) if p != q) / D
    return {"inv": sim * inv, "var": std * sum(var_terms) / 2, "cov": cov * cov_total}


def test_vicreg_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.6, (5, 3))  # std below 1 so the variance hinge is active
    b = a + rng.normal(0, 0.3, (5, 3))
    b[:, 2] = 2 * b[:, 0]  # a strongly correlated pair of dims so covariance is large
    expected = _vicreg_by_hand(a, b, sim=2.0, std=3.0, cov=0.5)
    loss, terms = vicreg_loss(torch.tensor(a), torch.tensor(b), sim=2.0, std=3.0, cov=0.5)
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-10), k
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-10)
    assert all(v > 0.01 for v in expected.values())


def test_vicreg_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one shape"):
        vicreg_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.zeros(1, 3), torch.zeros(1, 3))


def test_gradient_reaches_both_branches_and_projectors():
    torch.manual_seed(0)
    specs = encoder_specs("resnet10t", "resnet10t", img_size=32)
    model = TwoBranch(specs=specs, projector_dims="16-16")
    h_rgb, h_thermal, z_rgb, z_thermal = model(torch.randn(4, 3, 32, 32), torch.randn(4, 1, 32, 32))
    assert h_rgb.shape == (4, 512) and z_thermal.shape == (4, 16)
    loss, _ = vicreg_loss(z_rgb, z_thermal)
    loss.backward()
    for part in (model.rgb, model.thermal, model.proj_rgb, model.proj_thermal):
        grads = [p.grad.abs().sum().item() for p in part.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0


def test_projector_layout():
    p = projector(8, "16-16-4")
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert p[-1].out_features == 4 and p[-1].bias is None


def test_vit_branches_get_their_own_patch_size():
    specs = encoder_specs("vit_tiny_patch16_224", "vit_tiny_patch16_224", img_size=32, rgb_patch=16,
                          thermal_patch=8)
    assert specs["rgb"]["kwargs"] == {"img_size": 32, "patch_size": 16}
    assert specs["thermal"]["kwargs"] == {"img_size": 32, "patch_size": 8}
    assert specs["thermal"]["in_chans"] == 1


def test_biases_and_norms_get_no_decay_or_lars_adaptation():
    model = TwoBranch(specs=encoder_specs("resnet10t", "resnet10t", img_size=32), projector_dims="8-8")
    opt = build_optimizer(model, name="lars", weight_decay=1e-6)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-6 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and not no_decay["always_adapt"]  # timm adapts only if wd != 0
    assert all(p.ndim <= 1 for p in no_decay["params"]) and len(no_decay["params"]) > 10
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, name="sgd", weight_decay=0.0)


def _global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _loss_and_grads(x_rgb, x_thermal):
    torch.manual_seed(0)
    f_a, f_b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    loss, terms = vicreg_loss(f_a(x_rgb), f_b(x_thermal))
    loss.backward()
    grads = [p.grad for p in (*f_a.parameters(), *f_b.parameters())]
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x_rgb, x_thermal = _global_batch()
    rows = slice(rank * 4, rank * 4 + 4)
    loss, terms, grads = _loss_and_grads(x_rgb[rows], x_thermal[rows])
    for g in grads:  # what DDP does: average parameter gradients over ranks
        dist.all_reduce(g)
        g /= world
    dist.all_reduce(loss)
    torch.save({"loss": loss / world, "terms": terms, "grads": grads}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gather_matches_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    loss, terms, grads = _loss_and_grads(*_global_batch())
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in results:
        assert res["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
        # var/cov see the gathered global batch on every rank; inv is each rank's local MSE
        assert res["terms"]["var"].item() == pytest.approx(terms["var"].item(), rel=1e-5)
        assert res["terms"]["cov"].item() == pytest.approx(terms["cov"].item(), rel=1e-5)
        for g_dist, g_one in zip(res["grads"], grads, strict=True):
            torch.testing.assert_close(g_dist, g_one, rtol=1e-4, atol=1e-6)


def test_importing_the_package_does_no_work():
    import subprocess
    import sys

    code = "import sys, stage1_jea; assert 'torch' not in sys.modules; print(stage1_jea.vicreg_loss.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "vicreg_loss"


def relative_change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, float]:
    """||w - w_before|| / ||w_before|| per weight tensor (ndim > 1): how far an optimiser moved each one."""
    return {name: float((p.detach() - before[name]).norm() / before[name].norm().clamp_min(1e-12))
            for name, p in model.named_parameters() if p.ndim > 1}


def _one_step(name: str, *, lr: float, **kw) -> float:
    """Relative change ||Δw|| / ||w|| of a Linear(4, 3) with every weight 0.5 after one optimiser step."""
    from sagecast_common.schedule import set_lr

    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    before = {"weight": layer.weight.detach().clone()}
    opt = build_optimizer(layer, name=name, **kw)
    set_lr(opt, lr)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    layer(x).pow(2).sum().backward()
    assert (layer.weight.grad != 0).all()
    opt.step()
    return relative_change(before, layer)["weight"]


def test_one_optimiser_step_moves_the_weights_by_a_known_relative_amount():
    # AdamW's first step moves every element by lr (m/sqrt(v) = ±1): ||Δw|| = lr·√12, ||w|| = 0.5·√12
    assert _one_step("adamw", lr=0.002, weight_decay=0.0) == pytest.approx(0.002 / 0.5, rel=1e-3)
    # LARS scales the step to lr · eta · ||w|| (tiny weight decay aside): relative lr · eta
    assert _one_step("lars", lr=0.075, weight_decay=1e-6, trust_coefficient=0.001) == pytest.approx(7.5e-5, rel=1e-3)
    assert _one_step("lars", lr=0.2, weight_decay=1e-6, trust_coefficient=0.01) == pytest.approx(2e-3, rel=1e-3)


def test_quick_preset_optimiser_step_moves_every_conv_weight():
    from sagecast_common.schedule import set_lr

    torch.manual_seed(0)
    model = TwoBranch(specs=encoder_specs("resnet10t", "resnet10t", img_size=32), projector_dims="16-16")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, name="adamw", weight_decay=0.05)
    set_lr(opt, 0.008 * 64 / 256)  # the quick preset's peak lr
    *_, z_a, z_b = model(torch.randn(8, 3, 32, 32), torch.randn(8, 1, 32, 32))
    vicreg_loss(z_a, z_b)[0].backward()
    opt.step()
    change = relative_change(before, model)
    grads = dict(model.named_parameters())
    conv = [v for n, v in change.items() if "conv" in n and grads[n].grad.abs().sum() > 0]
    # each element moves by at most lr (+ decay): the relative change is at most lr / rms(w), ~0.002/0.06.
    # convs behind a zero-initialised BN gamma (timm's zero_init_last) get no gradient yet: decay only
    still = [v for n, v in change.items() if "conv" in n and grads[n].grad.abs().sum() == 0]
    assert len(conv) >= 6 and min(conv) > 1e-3 and max(conv) < 0.2  # the stems, 3 convs per branch
    assert len(still) >= 8 and all(v == pytest.approx(0.002 * 0.05, rel=1e-3) for v in still)
