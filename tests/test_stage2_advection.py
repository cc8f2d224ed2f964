"""The advection path of the stage-2 networks (stage2_forecast.advection): clouds reach a view from where the
motion says they were, not from elsewhere; a closed gate or no motion changes nothing; rotating views and motion
together rotates the forecasts; the training loop's parameter groups."""

import math

import numpy as np
import pytest
import torch

from sagecast_common.schedule import set_lr
from stage2_forecast import samples, train
from stage2_forecast.advection import HEIGHT_M, LR_SCALE, Advection
from stage2_forecast.train import Config, build_model
from tests.test_stage2_motion import data, motion_file, turn  # noqa: F401 (fixtures)
from tests.test_stage2_views import rotate, with_horizon_row

SKY_COT = 1 / math.tan(math.radians(50.0))  # ground offset of a sky view's centre, per metre of height


def hand_batch(*, motion, rows: int = 1, marked=(0, 4), dim: int = 4, scans: int = 3) -> dict:
    """One sample: every view of every slot zero except one marked vector (all ones) at (row, column) at t."""
    x = torch.zeros(1, rows, 8, scans + 2, dim)
    x[0, marked[0], marked[1], 0] = 1.0
    return {"view_x": x, "view_mask": torch.ones(1, rows, 8, scans + 2, dtype=torch.bool),
            "view_dt": torch.tensor([[0.0, -5.0, -10.0, -15.0, -30.0]])[:, :scans + 2],
            "motion": torch.tensor(motion, dtype=torch.float32).expand(1, scans + 2, 2).clone(),
            "motion_mask": torch.ones(1, scans + 2, dtype=torch.bool)}


def opened(module: Advection) -> Advection:
    with torch.no_grad():
        module.gate.fill_(1.0)
    return module.eval()


def test_clouds_reach_the_view_they_move_toward_and_no_other():
    adv = opened(Advection(dim=4, modalities=2, g=1, horizons_min=(5.0,), n_scans=3))
    # the south view's clouds (column 4), moved north by twice the ring radius in 5 min, are over the north view
    speed = 2 * SKY_COT * HEIGHT_M / 300.0
    base = torch.zeros(1, 1, 8, 4)
    north = adv(hand_batch(motion=[0.0, speed]), base)[0, 0]  # (P, D)
    assert north[0].min() > 0.5  # most of view 0's footprint was over view 4 at t
    assert north[[2, 3, 4, 5, 6]].abs().max() < 0.05  # none where the path does not lead
    assert north[[1, 7]].max() < north[0].min()  # the neighbours' footprints overlap view 0's: a share of it
    south = adv(hand_batch(motion=[0.0, -speed]), base)[0, 0]  # moving south, they leave the ring
    assert south.abs().max() < 0.05
    # the learned height scales the displacement: at twice the height the same wind moves them half as far
    with torch.no_grad():
        adv.log_height.add_(math.log(2.0))
    assert adv(hand_batch(motion=[0.0, speed]), base)[0, 0, 0].max() < 0.05


def test_hour_mode_moves_departures_from_each_views_own_mean_not_its_look():
    speed = 2 * SKY_COT * HEIGHT_M / 300.0  # the south view's footprint is over the north view in 5 min
    scan = opened(Advection(dim=4, modalities=2, g=1, horizons_min=(5.0,), n_scans=3))
    hour = opened(Advection(dim=4, modalities=2, g=1, horizons_min=(5.0,), n_scans=3, ref_slot=4))
    # every view looks its own way (sun glare, haze) and the same at every scan: nothing moves, nothing changes
    look = torch.arange(8.0)[:, None, None].expand(8, 5, 4)
    batch = hand_batch(motion=[0.0, speed])
    batch["view_x"] = look[None, None].clone()
    base = look[None, None, :, 0]  # (1, H, P, D): each view's own look
    torch.testing.assert_close(hour(batch, base), base, atol=1e-5, rtol=0)
    assert (scan(batch, base) - base)[0, 0, 0].min() > 2.0  # routing whole vectors drags view 4's look to view 0
    # a cloud: view 4 departs from its own mean at t by one; the north view gets that departure on its own look
    batch["view_x"][0, 0, 4, 0] += 1.0
    moved = hour(batch, base) - base
    assert moved[0, 0, 0].min() > 0.5 and moved[0, 0, [2, 3, 4, 5, 6]].abs().max() < 0.05


def test_the_motion_is_the_learned_mix_of_the_slots_that_have_one():
    adv = Advection(dim=4, modalities=2, g=1, horizons_min=(5.0,), n_scans=3, motion_slots=5)
    batch = hand_batch(motion=[0.0, 0.0])
    batch["motion"] = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [1.0, 1.0], [2.0, 2.0], [-3.0, 2.0]]])
    m, moving = adv.motion(batch)
    torch.testing.assert_close(m, torch.tensor([[1.0, 2.0]]))  # at start: the mean of the five
    assert moving.tolist() == [True]
    batch["motion_mask"] = torch.tensor([[False, True, False, False, True]])
    torch.testing.assert_close(adv.motion(batch)[0], torch.tensor([[-1.5, 3.5]]))  # a slot without one: left out
    with torch.no_grad():
        adv.motion_slot[1] = 20.0  # learned: slot 1 alone
    torch.testing.assert_close(adv.motion(batch)[0], torch.tensor([[0.0, 5.0]]))
    batch["motion_mask"] = torch.zeros(1, 5, dtype=torch.bool)
    m, moving = adv.motion(batch)
    assert moving.tolist() == [False] and torch.equal(m, torch.zeros(1, 2))


def test_the_horizon_row_brings_clouds_from_farther_upwind_and_not_its_own_level():
    adv = opened(Advection(dim=4, modalities=2, g=1, horizons_min=(5.0,), n_scans=3))
    far = 1 / math.tan(math.radians(32.0))  # the horizon row's centre offset
    speed = (far + SKY_COT) * HEIGHT_M / 300.0  # from the south horizon view to the north sky view in 5 min
    base = torch.zeros(1, 1, 8, 4)
    north = adv(hand_batch(motion=[0.0, speed], rows=2, marked=(1, 4)), base)[0, 0]
    east = adv(hand_batch(motion=[speed, 0.0], rows=2, marked=(1, 4)), base)[0, 0]
    # the marked horizon view stands out of its row by 7/8 (the others by −1/8): the north view gets it with a
    # north wind, not with an east one (its clouds then came from the west)
    assert north[0].min() > 0.3 and east[0].max() < 0.05
    # a whole horizon row brighter than the sky row (haze, more air) carries its pattern, not its level
    level = hand_batch(motion=[0.0, speed], rows=2, marked=(1, 4))
    level["view_x"][:, 1] += 5.0
    torch.testing.assert_close(adv(level, base), north[None, None], atol=1e-5, rtol=0)


def test_a_closed_gate_or_no_motion_leaves_the_base_as_it_is():
    adv = Advection(dim=4, modalities=2, g=1, horizons_min=(5.0, 15.0), n_scans=3).eval()
    base = torch.randn(1, 2, 8, 4)
    batch = hand_batch(motion=[3.0, 4.0])
    assert torch.equal(adv(batch, base), base)  # gate 0: exactly its base
    opened(adv)
    assert not torch.allclose(adv(batch, base), base)
    still = {**batch, "motion_mask": torch.zeros(1, 5, dtype=torch.bool)}  # nothing tracked: nothing routed
    torch.testing.assert_close(adv(still, base), base, atol=1e-6, rtol=0)


def test_grid_cells_keep_the_stage1_layout():
    adv = Advection(dim=2 * 4 * 3, modalities=2, g=2, horizons_min=(5.0,), n_scans=3)
    x = torch.arange(24.0).reshape(1, 24)  # modality-major, then (row, col, channel) of the 2 × 2 grid
    cells = adv.cells(x)
    assert cells.shape == (1, 4, 6)
    assert cells[0, 1].tolist() == [3.0, 4.0, 5.0, 15.0, 16.0, 17.0]  # cell (0, 1): both modalities' channels
    assert torch.equal(adv.uncells(cells), x)
    assert adv.src_el[0] > adv.src_el[2] and adv.src_az[0] < adv.src_az[1]  # top cell higher, left anticlockwise


@pytest.mark.parametrize("rows,advect_from", [(1, "scan"), (2, "scan"), (2, "hour")])
@pytest.mark.parametrize("variant", ["detr", "jepa"])
def test_rotating_views_and_motion_together_rotates_the_advected_forecasts(data, variant, rows,  # noqa: F811
                                                                           advect_from):
    run, motion, table, win, mean, std, clim, damping = data
    batch = samples.gather(table, win, np.arange(12), clim=clim)
    if rows == 2:
        batch = with_horizon_row(batch)
    torch.manual_seed(0)
    model = build_model(Config(variant=variant, stage1_run=str(run), width=32, jepa_width=32, dropout=0.0,
                               residual_base="damped", motion=str(motion), advect_from=advect_from), mean, std,
                        damping).eval()
    assert model.advect is not None and (model.advect.ref_slot is None) == (advect_from == "scan")
    with torch.no_grad():
        model.advect.gate.fill_(1.0)
        model.advect.motion_slot.normal_(0.0, 1.0)
        out = model(batch)
        model.advect.gate.zero_()
        assert (model(batch) - out).abs().max() > 1e-3  # the open path changes the forecasts
        model.advect.gate.fill_(1.0)
        for k in (1, 3, 6):
            torch.testing.assert_close(model(turn(batch, k)), torch.roll(out, k, dims=2), atol=1e-5, rtol=1e-5)
            assert (model(rotate(batch, k)) - torch.roll(out, k, dims=2)).abs().max() > 1e-3


def test_advect_false_or_no_motion_builds_no_path(data):  # noqa: F811
    run, motion, _, _, mean, std, _, damping = data
    assert build_model(Config(stage1_run=str(run), width=32, residual_base="damped", motion=str(motion),
                              advect=False), mean, std, damping).advect is None
    assert build_model(Config(stage1_run=str(run), width=32, residual_base="damped"), mean, std, damping).advect is None


def test_the_paths_geometry_learns_faster_and_without_weight_decay(data):  # noqa: F811
    run, motion, _, _, mean, std, _, damping = data
    model = build_model(Config(stage1_run=str(run), width=32, residual_base="damped", motion=str(motion)), mean, std,
                        damping)
    opt = torch.optim.AdamW(train.param_groups(model), lr=1e-3, weight_decay=0.05)
    set_lr(opt, 2e-3)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    height, gate = group_of[id(model.advect.log_height)], group_of[id(model.advect.gate)]
    assert height["weight_decay"] == 0.0 and height["lr"] == pytest.approx(2e-3 * LR_SCALE)
    assert gate["weight_decay"] == 0.05 and gate["lr"] == pytest.approx(2e-3 * LR_SCALE)
    assert group_of[id(model.damping)]["weight_decay"] == 0.0 and group_of[id(model.damping)]["lr"] == 2e-3
    assert group_of[id(model.head[1].weight)]["lr"] == 2e-3
    slot = group_of[id(model.advect.motion_slot)]
    assert slot["weight_decay"] == 0.0 and slot["lr"] == pytest.approx(2e-3 * LR_SCALE)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)
