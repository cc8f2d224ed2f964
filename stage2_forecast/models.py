"""The two stage-2 predictors; they share the view tokens, the batch format and the output (B, H, P, D).

A *view* is one capture position: row r (0 sky, 1 horizon) × azimuth column p (0..7, a ring). Its inputs are
the view context of `samples.view_context`, view_x (B, R, P, K, D): K slots = the last T scans and the 30/60-min
means. Every (view, slot) is one token: proj(x) + slot + time offset + row + time of day. No token carries its
absolute column: attention between two tokens gets a learned per-head bias by the circular distance of their
columns (0..4), so rotating the ring of views (column c → c + k mod 8, inputs and targets alike) permutes
tokens and outputs and changes nothing else. One head, shared by all views, reads every forecast. With the
cloud-motion input (`motion=True`, stage-2 config `motion`), each token also gets a linear map of its slot's
motion in its own view's frame (`samples.project_motion`: along and across the view's azimuth, and whether
there is one), never the absolute direction, so rotating views and motion together still changes nothing.
With the motion both variants also end in the advection path (stage2_forecast.advection; config `advect`,
default on): each view's forecast is blended, by a gate that starts closed, with the context cells its clouds
came from according to the motion, a learned cloud-base height and the views' geometry.

- `DetrForecaster`: transformer encoder over the context tokens; one query per (horizon, sky view) = the
  horizon's embedding + that view's own encoded token at t (so a query knows its view only relative to the
  others), starting from a zero target and cross-attending to the memory (facebookresearch/detr).
- `JepaForecaster`: the time-conditioned predictor of a single JEA: the context tokens (the stage-1 encoders'
  embeddings at t, frozen by default, cached in the table) plus one mask token per (horizon, sky view) carrying
  Δt; predictions are read at the mask tokens (facebookresearch/ijepa predictor).

Both predict in standardised target space. With `residual=True` each output adds a linear forecast fitted in
closed form on train, so a freshly built model (zero-initialised head) *is* that baseline and training learns
what the network adds to it. `base="damped"`: the damped-anomaly forecast clim(t+h) + a_h·(z(t) − clim(t)) of
the same view (train diurnal climatology from the batch, a per-(horizon, dimension) damping a_h initialised at
its closed-form least-squares value and trained on, `baselines.fit_damping_by_day`). `base="ridge"`: the batch's
`base`, the per-view ridge on the same view context (`baselines.view_ridge`; a fixed input).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn

from stage2_forecast.advection import Advection
from stage2_forecast.samples import project_motion

RING = 8  # azimuth columns of a row


def sinusoid(x: torch.Tensor, dim: int, *, min_period: float = 2.0, max_period: float = 2000.0) -> torch.Tensor:
    """(...,) values in minutes → (..., dim) sin/cos features with periods from `min_period` to `max_period`."""
    periods = torch.exp(torch.linspace(math.log(min_period), math.log(max_period), dim // 2, device=x.device))
    angle = 2 * math.pi * x[..., None] / periods
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Encodings(nn.Module):
    """Encodings shared by both predictors: time offset (minutes), context slot, tilt row, time of day + sun, and
    with `motion` the cloud motion in each view's frame."""

    def __init__(self, *, width: int, n_slots: int):
        super().__init__()
        self.width = width
        self.slot = nn.Parameter(torch.randn(n_slots, width) * 0.02)
        self.row = nn.Parameter(torch.randn(2, width) * 0.02)
        self.offset_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.clock_mlp = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.motion: nn.Linear | None = None  # enable_motion

    def enable_motion(self) -> None:
        """Add the motion map. The forecasters call this last in their constructor: every other weight then draws
        the random numbers it draws without motion, and a model without motion has no extra parameter at all."""
        self.motion = nn.Linear(3, self.width)

    def view_motion(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, P, K, W): each view's slots' motion in its own frame, mapped to the width (motion=True only)."""
        if "motion" not in batch:
            raise ValueError("this model takes the cloud motion (config motion=...): the batch needs motion and "
                             "motion_mask (samples.gather on a table with samples.join_motion)")
        return self.motion(project_motion(batch["motion"], batch["motion_mask"]))

    def offset(self, minutes: torch.Tensor) -> torch.Tensor:
        return self.offset_mlp(sinusoid(minutes, self.width))

    def clock(self, solar_hour: torch.Tensor, sun_elev: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * solar_hour / 24.0
        return self.clock_mlp(torch.stack([angle.sin(), angle.cos(), sun_elev / 90.0], dim=-1))

    def tokens(self, proj: nn.Module, batch: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """view_x-shaped x (B, R, P, K, D) → tokens (B, R·P·K, W), their columns (R·P·K,), padding (B, R·P·K)
        and the clock (B, W)."""
        B, R, P, K, D = x.shape
        clock = self.clock(batch["solar_hour"], batch["sun_elev"])
        tok = (proj(x) + self.offset(batch["view_dt"])[:, None, None] + self.slot[:K] + self.row[:R, None, None]
               + clock[:, None, None, None])
        if self.motion is not None:  # both rows of a column face the same way: one frame per column
            tok = tok + self.view_motion(batch)[:, None]
        cols = repeat(torch.arange(P, device=x.device), "p -> (r p k)", r=R, k=K)
        pad = ~rearrange(batch["view_mask"], "b r p k -> b (r p k)")
        return rearrange(tok, "b r p k w -> b (r p k) w"), cols, pad, clock


class CircularBias(nn.Module):
    """Additive attention bias by the circular column distance (0..RING/2) of query and key, per head, with the
    key padding folded in as a −1e9 penalty: (B, heads, Lq, Lk), the float mask of `Attention`.

    It depends on columns only through their difference mod RING, which is what keeps the model
    rotation-equivariant. Initialised as a locality prior (−0.5 per column apart) so that queries that differ only
    in their column (the jepa mask tokens) attend differently from the first step.
    """

    def __init__(self, *, heads: int):
        super().__init__()
        self.bias = nn.Parameter(-0.5 * torch.arange(RING // 2 + 1, dtype=torch.float32).repeat(heads, 1))

    def forward(self, q_cols: torch.Tensor, k_cols: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        diff = (q_cols[:, None] - k_cols[None, :]) % RING
        dist = torch.minimum(diff, RING - diff)  # (Lq, Lk)
        # finite, not −inf: a row of only padded keys then stays finite (uniform) instead of NaN
        return self.bias[:, dist][None] + torch.zeros_like(pad, dtype=self.bias.dtype).masked_fill(
            pad, -1e9)[:, None, None]


class Attention(nn.Module):
    """Multi-head attention with an additive float mask (B, heads, Lq, Lk). Written out rather than
    nn.MultiheadAttention / nn.TransformerEncoderLayer, whose fused inference path returned NaN rows with such a
    mask (torch 2.14) where the training path did not."""

    def __init__(self, *, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b l (n d) -> b n l d", n=self.heads)
        k, v = rearrange(self.kv(memory), "b l (two n d) -> two b n l d", two=2, n=self.heads)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                       dropout_p=self.dropout if self.training else 0.0)
        return self.out(rearrange(a, "b n l d -> b l (n d)"))


def _feed_forward(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width),
                         nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer over tokens (B, L, W) with an attention bias (B, heads, L, L)."""

    def __init__(self, *, width: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(width=width, heads=heads, dropout=dropout)
        self.ff = _feed_forward(width, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.norms[0](x)
        x = x + self.drop(self.attn(h, h, bias))
        return x + self.ff(self.norms[1](x))


def _encoder(width: int, depth: int, heads: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(EncoderLayer(width=width, heads=heads, dropout=dropout) for _ in range(depth))


def _encode(layers: nn.ModuleList, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x, bias)
    return x


def _zero_head(width: int, dim_out: int) -> nn.Sequential:
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim_out))
    nn.init.zeros_(head[1].weight)
    nn.init.zeros_(head[1].bias)
    return head


class QueryDecoderLayer(nn.Module):
    """DETR decoder layer: the query position is added to queries (and keys of self-attention) at every layer;
    both attentions take a CircularBias mask."""

    def __init__(self, *, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(width=width, heads=heads, dropout=dropout)
        self.cross_attn = Attention(width=width, heads=heads, dropout=dropout)
        self.ff = _feed_forward(width, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))

    def forward(self, tgt, query_pos, memory, self_bias, cross_bias):
        q = self.norms[0](tgt) + query_pos
        tgt = tgt + self.self_attn(q, q, self_bias)
        tgt = tgt + self.cross_attn(self.norms[1](tgt) + query_pos, memory, cross_bias)
        return tgt + self.ff(self.norms[2](tgt))


class DetrForecaster(nn.Module):
    """View context (B, R, P, K, D) → forecasts (B, H, P, D) of the sky views via (horizon, view) queries."""

    def __init__(self, *, dim: int, n_slots: int, horizons_min: tuple[float, ...], width: int = 128,
                 depth: int = 2, heads: int = 4, dropout: float = 0.1, residual: bool = True,
                 damping: torch.Tensor | None = None, base: str = "damped", motion: bool = False,
                 advect: dict | None = None):
        super().__init__()
        self.residual, self.base = residual, _check_base(base)
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32), persistent=False)
        self.enc = Encodings(width=width, n_slots=n_slots)
        self.proj = nn.Linear(dim, width)
        self.bias = CircularBias(heads=heads)
        self.encoder = _encoder(width, depth, heads, dropout)
        self.queries = nn.Parameter(torch.randn(len(horizons_min), width) * 0.02)
        self.decoder = nn.ModuleList(QueryDecoderLayer(width=width, heads=heads, dropout=dropout) for _ in range(depth))
        self.head = _zero_head(width, dim)
        self.damping = _damping(damping, len(horizons_min), dim).requires_grad_(residual and self.base == "damped")
        if motion:
            self.enc.enable_motion()
        self.advect = _advection(advect, motion, dim, horizons_min)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B, R, P, K, D = batch["view_x"].shape
        H = len(self.horizons)
        tokens, cols, pad, clock = self.enc.tokens(self.proj, batch, batch["view_x"])
        memory = _encode(self.encoder, tokens, self.bias(cols, cols, pad))
        own = rearrange(memory, "b (r p k) w -> b r p k w", r=R, p=P)[:, 0, :, 0]  # each sky view's token at t
        query_pos = (self.queries + self.enc.offset(self.horizons))[None, :, None] + own[:, None]  # (B, H, P, W)
        query_pos = rearrange(query_pos, "b h p w -> b (h p) w") + clock[:, None]
        q_cols = repeat(torch.arange(P, device=tokens.device), "p -> (h p)", h=H)
        no_pad = torch.zeros(B, H * P, dtype=torch.bool, device=tokens.device)
        self_mask, cross_mask = self.bias(q_cols, q_cols, no_pad), self.bias(q_cols, cols, pad)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, self_mask, cross_mask)
        out = rearrange(self.head(tgt), "b (h p) d -> b h p d", p=P)
        out = out + _residual(batch, batch["ctx_z"][:, 0], self.damping, self.base) if self.residual else out
        return out if self.advect is None else self.advect(batch, out)


def _advection(advect: dict | None, motion: bool, dim: int, horizons_min) -> Advection | None:
    """The advection path (stage2_forecast.advection) when asked for: advect = {modalities, g, n_scans}, the
    stage-1 layout of the vectors and the scans of the context; it routes by the motion, so it needs it."""
    if advect is None:
        return None
    if not motion:
        raise ValueError("the advection path routes by the cloud motion: it needs motion=True (config motion=...)")
    return Advection(dim=dim, horizons_min=tuple(horizons_min), **advect)


def _check_base(base: str) -> str:
    if base not in ("damped", "ridge"):
        raise ValueError(f"base={base!r}: expected damped or ridge")
    return base


def _damping(init: torch.Tensor | None, H: int, D: int) -> nn.Parameter:
    """Per-(horizon, dimension) damping; the closed-form train fit when given, else 1 (smart persistence)."""
    return nn.Parameter(torch.ones(H, D) if init is None else torch.as_tensor(init, dtype=torch.float32).clone())


def damped_anomaly(now: torch.Tensor, now_mask: torch.Tensor, clim_now: torch.Tensor, clim_tgt: torch.Tensor,
                   damping: torch.Tensor) -> torch.Tensor:
    """clim(t+h) + a_h·(z(t) − clim(t)): now/clim_now (B, P, D), now_mask (B, P), clim_tgt (B, H, P, D),
    damping (H, D) → (B, H, P, D). A preset missing at t contributes no anomaly.

    The full-rank part of the forecast that the narrow head cannot represent: each dimension relaxes from its
    current anomaly toward the diurnal climatology at its own rate per horizon.
    """
    anomaly = (now - clim_now) * now_mask[..., None]
    return clim_tgt + anomaly[:, None] * damping[None, :, None, :]


def _residual(batch: dict[str, torch.Tensor], now: torch.Tensor, damping: torch.Tensor, base: str) -> torch.Tensor:
    if base == "ridge":
        if "base" not in batch:
            raise ValueError("residual_base=ridge needs the ridge forecast in the batch: samples.gather(..., "
                             "base=baselines.ridge_start(...)[0][split])")
        return batch["base"]
    if "clim_now" not in batch:
        raise ValueError("residual forecasters need the climatology in the batch: samples.gather(..., clim=clim)")
    return damped_anomaly(now, batch["ctx_mask"][:, 0], batch["clim_now"], batch["clim_tgt"], damping)


def encode_images(encoders: nn.ModuleDict, rgb: torch.Tensor, thermal: torch.Tensor, *, mean: torch.Tensor,
                  std: torch.Tensor, img_size: int | None = None) -> torch.Tensor:
    """Images (..., C, S, S) → standardised concat of the encoders' features (..., D), in `encoders` order."""
    lead = rgb.shape[:-3]
    feats = []
    for name, module in encoders.items():
        x = (rgb if name == "rgb" else thermal).flatten(0, len(lead) - 1)
        if img_size and x.shape[-1] != img_size:
            x = nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        feats.append(module(x))
    return ((torch.cat(feats, dim=-1) - mean) / std).reshape(*lead, -1)


class JepaForecaster(nn.Module):
    """View context (its sky row at t from the stage-1 encoders) + mask tokens (Δt) → forecasts (B, H, P, D)."""

    def __init__(self, *, encoders: nn.ModuleDict, mean: torch.Tensor, std: torch.Tensor, n_slots: int,
                 horizons_min: tuple[float, ...], img_size: int | None = None, width: int = 64, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1, residual: bool = True, finetune: bool = False,
                 damping: torch.Tensor | None = None, base: str = "damped", motion: bool = False,
                 advect: dict | None = None):
        super().__init__()
        self.encoders, self.img_size, self.residual, self.finetune = encoders, img_size, residual, finetune
        self.base = _check_base(base)
        self.encoders.requires_grad_(finetune)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32), persistent=False)
        dim = mean.numel()
        self.enc = Encodings(width=width, n_slots=n_slots)
        self.proj = nn.Linear(dim, width)
        self.bias = CircularBias(heads=heads)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.predictor = _encoder(width, depth, heads, dropout)
        self.head = _zero_head(width, dim)
        self.damping = _damping(damping, len(horizons_min), dim).requires_grad_(residual and self.base == "damped")
        if motion:
            self.enc.enable_motion()
        self.advect = _advection(advect, motion, dim, horizons_min)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoders.train(mode and self.finetune)  # a frozen encoder keeps its eval-mode normalisation
        return self

    def context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sky views at t (B, P, D): the encoders' embeddings of the images, or (frozen) the cached ones."""
        if "rgb" not in batch:
            if self.finetune:
                raise ValueError("finetune=True needs the images at t in the batch (gather(..., images=True))")
            # Frozen encoders on the frames at t give exactly the exported stage-1 embeddings, which the batch
            # already holds standardised in view_x[:, 0, :, 0]: reading them is the same computation, cached.
            return batch["view_x"][:, 0, :, 0] * batch["view_mask"][:, 0, :, 0, None]
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            z = encode_images(self.encoders, batch["rgb"], batch["thermal"], mean=self.mean, std=self.std,
                              img_size=self.img_size)
        return z * batch["view_mask"][:, 0, :, 0, None]  # (B, P, D), missing views zeroed like the stage-1 table

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.context(batch)
        B, R, P, K, D = batch["view_x"].shape
        H = len(self.horizons)
        x = batch["view_x"].clone()
        x[:, 0, :, 0] = z  # the encoders' view of t (the same values unless fine-tuned)
        ctx, cols, pad, clock = self.enc.tokens(self.proj, batch, x)
        masks = self.mask_token + self.enc.offset(self.horizons)[:, None] + self.enc.row[0]  # (H, 1, W)
        masks = repeat(masks, "h 1 w -> b h p w", b=B, p=P) + clock[:, None, None]
        if self.enc.motion is not None:  # each mask token knows the motion at t in its own view's frame
            masks = masks + self.enc.view_motion(batch)[:, None, :, 0]
        masks = rearrange(masks, "b h p w -> b (h p) w")
        all_cols = torch.cat([cols, repeat(torch.arange(P, device=z.device), "p -> (h p)", h=H)])
        all_pad = torch.cat([pad, torch.zeros(B, H * P, dtype=torch.bool, device=z.device)], 1)
        out = _encode(self.predictor, torch.cat([ctx, masks], dim=1), self.bias(all_cols, all_cols, all_pad))
        out = rearrange(self.head(out[:, ctx.shape[1]:]), "b (h p) d -> b h p d", h=H)
        out = out + _residual(batch, z, self.damping, self.base) if self.residual else out
        return out if self.advect is None else self.advect(batch, out)


def frozen_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of frozen stage-1 encoders (JEPA, finetune=False): a copy of the stage-1 run's
    encoders.pt, which checkpoints leave out and loading rebuilds from that file."""
    if isinstance(model, JepaForecaster) and not model.finetune:
        return frozenset(f"encoders.{k}" for k in model.encoders.state_dict())
    return frozenset()
