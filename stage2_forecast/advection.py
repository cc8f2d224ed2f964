"""Where the clouds of a view's future came from: a geometric advection path the stage-2 networks share.

Only with the cloud-motion input (stage-2 config `motion=PATH`, `advect=True`). For each sky view's forecast at t +
h, points spread over that view's field of view (per cell of its g × g grid) are traced upwind: a cloud at ground
offset x (per metre of cloud-base height) at t + h was at x − m·(h + lag)/H at the context scan `lag` minutes
before t, with m the cloud motion (m/s toward east, north) and H a cloud-base height the model learns (one value,
initialised at HEIGHT_M). m is a learned weighting of the context slots' motions (the scans', then the 30/60-min
means'; equal at start, slots without one left out): the wind turns over hours while each loop's estimate carries
its own noise, so a longer mean can be the better estimate of the motion now. Each traced point is compared with
the centre of every cell of every view of the context scans (both rows when the data has the horizon row; the
scans, not the 30/60-min means) in elevation and azimuth; a softmax over those cells, with a learned sharpness, a
learned preference per scan (recent first) and the cells outside the view's field of view excluded, weighs their
vectors; a learned "seen by none" logit weighs the forecast it starts from instead. The mean over a cell's points
is that cell's advected vector, and the output is

    forecast + gate_h · (advected − forecast)

with one gate per horizon initialised at 0: a freshly built model is its forecast (the network's, on its
residual start), and training learns how far to trust the routing. One number per horizon, not per channel:
clouds move whole, so a cell's vector is moved as a whole, and any linear read-out of the forecast (the
cloud-fraction probe) sees the same blend. (A per-channel gate, tried on `make compare`'s data, fitted the
embedding MSE as well and the cloud fraction slightly worse.) A horizon-row cell enters as the sky row's ring
mean at that scan plus its own departure from the horizon row's ring mean (times a learned per-channel scale,
initialised at 1): the horizon row sees the sky through more air and haze, so its level says little about
the sky row's, while its pattern shows where clouds are. Without that, on overcast days the routing dragged
the sky views toward the horizon row's look and lost to the ridge.

Why here and not in the ridge: the routing is a nonlinear function of the motion (which cell a point lands in
depends on the motion's direction and speed × the horizon), so "the network beats the same-input ridge" stays
the finding of something nonlinear. The geometry is that of data.sky (row elevations, the thermal field of
view 36° × 48°, columns 45° apart with no mount offset) and data.synthetic.oracle's view-limited oracle traces
points the same way with the true wind and height; this path knows neither.

Everything is a function of azimuth differences and of the motion in the same frame, so rotating the ring of
views together with the motion rotates the output (tests/test_stage2_advection.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from data.formats import THERMAL_H, THERMAL_W
from data.sky import THERMAL_VFOV_DEG, TILT_ELEVATION_DEG
from stage2_forecast.samples import view_azimuths_deg

HEIGHT_M = 1500.0  # the learned cloud-base height starts here (low-cloud bases 0.3–2 km, ../shared/SAGE_DATA.md §8)
HALF_V = THERMAL_VFOV_DEG / 2  # 18°
HALF_H = THERMAL_VFOV_DEG * THERMAL_W / THERMAL_H / 2  # 24°
LR_SCALE = 10.0  # its few geometric parameters (height, sharpness, …) learn at this multiple of the peak lr
NO_DECAY = ("log_height", "log_sharp", "lag_bias", "null", "horizon_scale", "motion_slot")  # weight decay: not these


def _wrap(deg: torch.Tensor) -> torch.Tensor:
    return torch.remainder(deg + 180.0, 360.0) - 180.0


class Advection(nn.Module):
    """(B, H, P, D) base forecast of the sky views → the advected blend (module doc). `dim` = modalities × g² ×
    channels in the stage-1 layout: modality-major, then (row, col, channel) of the g × g grid (g = 1: pooled)."""

    def __init__(self, *, dim: int, modalities: int, g: int, horizons_min: tuple[float, ...], n_scans: int,
                 rows: int = 2, motion_slots: int = 1, ref_slot: int | None = None):
        super().__init__()
        if dim % (modalities * g * g):
            raise ValueError(f"dim {dim} is not modalities {modalities} × g² {g * g} × channels")
        self.modalities, self.g, self.n_scans, self.ref_slot = modalities, g, n_scans, ref_slot
        self.channels = dim // (modalities * g * g)
        cell_c = modalities * self.channels  # one cell's vector: every modality's channels
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32), persistent=False)
        self.log_height = nn.Parameter(torch.tensor(math.log(HEIGHT_M)))
        self.log_sharp = nn.Parameter(torch.tensor(0.0))
        self.lag_bias = nn.Parameter(-torch.arange(n_scans, dtype=torch.float32))
        self.null = nn.Parameter(torch.tensor(-2.0))
        self.horizon_scale = nn.Parameter(torch.ones(cell_c))
        self.gate = nn.Parameter(torch.zeros(len(horizons_min)))
        # which motion moves the clouds: a learned softmax over the context slots' vectors (scans, then the
        # 30/60-min means), equal at start; the wind turns over hours, the per-loop noise averages down
        self.motion_slot = nn.Parameter(torch.zeros(motion_slots))
        az = torch.as_tensor(view_azimuths_deg())  # (P,)
        el = torch.tensor(TILT_ELEVATION_DEG[:rows], dtype=torch.float32)  # (R,)
        # cell (i, j) of a view: i = 0 the top (higher elevation), j = 0 the left (anticlockwise, lower azimuth)
        step_e, step_a = 2 * HALF_V / g, 2 * HALF_H / g
        ce = HALF_V - step_e * (torch.arange(g) + 0.5)  # (g,) offsets from the view centre
        ca = -HALF_H + step_a * (torch.arange(g) + 0.5)
        self.register_buffer("src_el", (el[:, None, None, None] + ce[None, None, :, None]).expand(
            rows, len(az), g, g).reshape(-1), persistent=False)  # (R·P·g·g,) in (row, column, i, j) order
        self.register_buffer("src_az", (az[None, :, None, None] + ca[None, None, None, :]).expand(
            rows, len(az), g, g).reshape(-1), persistent=False)
        self.register_buffer("src_view_el", el[:, None, None, None].expand(rows, len(az), g, g).reshape(-1),
                             persistent=False)
        self.register_buffer("src_view_az", az[None, :, None, None].expand(rows, len(az), g, g).reshape(-1),
                             persistent=False)
        # target points: s × s per cell of each sky view (s = 3 pooled, 2 on a 2 × 2 grid), as ground offsets
        s = max(1, math.ceil(3 / g))
        pe = ce[:, None] + step_e * ((torch.arange(s) + 0.5) / s - 0.5)[None]  # (g, s)
        pa = ca[:, None] + step_a * ((torch.arange(s) + 0.5) / s - 0.5)[None]
        e = torch.deg2rad(el[0] + pe[:, None, :, None]).expand(g, g, s, s)  # (i, j, si, sj)
        a = torch.deg2rad(az[:, None, None, None, None] + pa[None, None, :, None, :]).expand(len(az), g, g, s, s)
        cot = 1.0 / torch.tan(e)
        pts = torch.stack([a.sin() * cot, a.cos() * cot], dim=-1)  # (P, g, g, s, s, 2) east, north per metre
        self.register_buffer("points", pts.reshape(len(az), g * g, s * s, 2), persistent=False)

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) → (..., g², modalities·channels): every modality's channels of each grid cell."""
        g, m, c = self.g, self.modalities, self.channels
        x = x.reshape(*x.shape[:-1], m, g * g, c).transpose(-3, -2)
        return x.reshape(*x.shape[:-3], g * g, m * c)

    def uncells(self, x: torch.Tensor) -> torch.Tensor:
        g, m, c = self.g, self.modalities, self.channels
        x = x.reshape(*x.shape[:-2], g * g, m, c).transpose(-3, -2)
        return x.reshape(*x.shape[:-3], m * g * g * c)

    def weights(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax weights (B, H, P, g², s², K·R·P·g²) over the context cells and (…,) the "seen by none" one."""
        mask = batch["view_mask"][:, :, :, :self.n_scans]  # (B, R, P, K)
        B, R, P, K = mask.shape
        motion, moving = self.motion(batch)  # (B, 2), (B,): one motion moves every scan's clouds
        lag = -batch["view_dt"][:, :K]  # (B, K) minutes before t, ≥ 0
        travel = (self.horizons[None, :, None] + lag[:, None, :]) * 60.0  # (B, H, K) seconds
        shift = motion[:, None, None, :] * (travel / self.log_height.exp())[..., None]  # (B, H, K, 2) per metre
        q = self.points[None, None, None] - shift[:, :, :, None, None, None, :]  # (B, H, K, P, g², s², 2)
        q_el = torch.rad2deg(torch.atan2(torch.ones_like(q[..., 0]), torch.linalg.vector_norm(q, dim=-1)))
        q_az = torch.rad2deg(torch.atan2(q[..., 0], q[..., 1]))
        n_src = R * P * self.g * self.g
        d_el = q_el[..., None] - self.src_el[:n_src]  # (B, H, K, P, g², s², n_src)
        d_az = _wrap(q_az[..., None] - self.src_az[:n_src])
        inside = ((q_el[..., None] - self.src_view_el[:n_src]).abs() <= HALF_V) & (
            _wrap(q_az[..., None] - self.src_view_az[:n_src]).abs() <= HALF_H)
        cell_e, cell_a = HALF_V / self.g, HALF_H / self.g
        logit = -((d_el / cell_e) ** 2 + (d_az / cell_a) ** 2) * self.log_sharp.exp()
        logit = logit + self.lag_bias[:K][None, None, :, None, None, None, None]
        present = mask.reshape(B, 1, R * P, K).transpose(2, 3).repeat_interleave(self.g * self.g, dim=-1)
        ok = inside & present[:, :, :, None, None, None, :] & moving[:, None, None, None, None, None, None]
        logit = logit.masked_fill(~ok, -1e9)  # finite: a point with no cell keeps a finite softmax (all null)
        logit = logit.permute(0, 1, 3, 4, 5, 2, 6).reshape(B, len(self.horizons), P, self.g * self.g, -1, K * n_src)
        null = self.null.expand(*logit.shape[:-1], 1)
        w = torch.softmax(torch.cat([logit, null], dim=-1), dim=-1)
        return w[..., :-1], w[..., -1]

    def motion(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) the motion that moves the clouds, m/s: the learned weighting of the slots that have one; (B,)
        whether any has."""
        n = self.motion_slot.shape[0]
        has = batch["motion_mask"][:, :n].bool()
        w = torch.softmax(self.motion_slot.expand(has.shape).masked_fill(~has, -1e9), dim=-1) * has
        return (w[..., None] * batch["motion"][:, :n]).sum(1), has.any(1)

    def _rows(self, src: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, R, P, K, g², cell) cells → the same with each horizon cell the sky row's ring mean at that slot plus
        its own departure from its row's ring mean (module doc); present (B, R, P, K)."""
        if src.shape[1] == 1:
            return src
        present = present[..., None, None].to(src.dtype)
        ring = (src * present).sum(2, keepdim=True) / present.sum(2, keepdim=True).clamp(min=1.0)
        return torch.cat([src[:, :1], ring[:, :1] + self.horizon_scale * (src[:, 1:] - ring[:, 1:])], dim=1)

    def forward(self, batch: dict[str, torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        x = batch["view_x"][:, :, :, :self.n_scans]  # (B, R, P, K, D)
        B, R, P, K, _ = x.shape
        src = self._rows(self.cells(x), batch["view_mask"][:, :, :, :K])  # (B, R, P, K, g², cell)
        w, w_null = self.weights(batch)  # (B, H, P, g², s², K·n_src), (B, H, P, g², s²)
        base_cells = self.cells(base)  # (B, H, P, g², cell)
        land = 1.0 - w_null.mean(-1)[..., None]  # (B, H, P, g², 1): the share of a cell's points that landed
        if self.ref_slot is None:
            lands_on = 0.0
        else:  # move departures from each view's own recent mean; they land on the target view's own mean
            has = batch["view_mask"][:, :, :, self.ref_slot]  # (B, R, P)
            ref = self.cells(batch["view_x"][:, :, :, self.ref_slot])  # (B, R, P, g², cell)
            ref = torch.where(has[..., None, None], ref, src[:, :, :, 0])  # no mean: no departure
            ref = self._rows(ref[:, :, :, None], (has | batch["view_mask"][:, :, :, 0])[..., None])[:, :, :, 0]
            src = src - ref[:, :, :, None]
            lands_on = land * torch.where(has[:, :1, :, None, None], ref[:, :1], base_cells)  # (B, H, P, g², cell)
        src = src.permute(0, 3, 1, 2, 4, 5).reshape(B, K * R * P * self.g * self.g, -1)  # (B, K·n_src, cell)
        moved = torch.einsum("bhpcsn,bnf->bhpcf", w, src) / w.shape[-2]
        advected = moved + lands_on + w_null.mean(-1)[..., None] * base_cells
        return base + self.gate[None, :, None, None] * (self.uncells(advected) - base)
