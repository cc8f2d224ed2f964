"""The two stage-2 predictors; they share the encodings, the batch format and the output (B, H, P, D).

- `DetrForecaster`: stage-1 embeddings of the last T scans (P × T tokens) + encodings of time offset, preset
  and time of day → transformer encoder; one learned query per (horizon, preset), starting from a zero target,
  cross-attends to the encoded context (facebookresearch/detr `models/transformer.py`).
- `JepaForecaster`: the stage-1 image encoders (frozen by default) embed the P images at time t; a narrow
  predictor sees those tokens plus mask tokens carrying Δt and the preset, and predictions are read at the
  mask tokens (facebookresearch/ijepa predictor).

Both predict in standardised target space. With `residual=True` each output adds a linear forecast fitted in
closed form on train, so a freshly built model (zero-initialised head) *is* that baseline and training learns
what the network adds to it. `base="damped"`: the damped-anomaly forecast clim(t+h) + a_h·(z(t) − clim(t)) of
the same preset (train diurnal climatology from the batch, a per-(horizon, dimension) damping a_h initialised
at its closed-form least-squares value and trained on, `baselines.fit_damping_by_day`). `base="ridge"`: the
batch's `base`, the ridge forecast from the last scan of all presets (`baselines.ridge_start`; a fixed input,
P·D × P·D coefficients per horizon are too many to hold as weights).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn


def sinusoid(x: torch.Tensor, dim: int, *, min_period: float = 2.0, max_period: float = 2000.0) -> torch.Tensor:
    """(...,) values in minutes → (..., dim) sin/cos features with periods from `min_period` to `max_period`."""
    periods = torch.exp(torch.linspace(math.log(min_period), math.log(max_period), dim // 2, device=x.device))
    angle = 2 * math.pi * x[..., None] / periods
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Encodings(nn.Module):
    """Encodings shared by both predictors: preset slot, time offset (minutes), time of day + sun elevation."""

    def __init__(self, *, width: int, n_presets: int):
        super().__init__()
        self.width = width
        self.preset = nn.Parameter(torch.randn(n_presets, width) * 0.02)
        self.offset_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.clock_mlp = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))

    def offset(self, minutes: torch.Tensor) -> torch.Tensor:
        return self.offset_mlp(sinusoid(minutes, self.width))

    def clock(self, solar_hour: torch.Tensor, sun_elev: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * solar_hour / 24.0
        return self.clock_mlp(torch.stack([angle.sin(), angle.cos(), sun_elev / 90.0], dim=-1))


def _encoder(width: int, depth: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def _zero_head(width: int, dim_out: int) -> nn.Sequential:
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim_out))
    nn.init.zeros_(head[1].weight)
    nn.init.zeros_(head[1].bias)
    return head


class QueryDecoderLayer(nn.Module):
    """DETR decoder layer: the query position is added to queries (and keys of self-attention) at every layer."""

    def __init__(self, *, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * width, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))

    def forward(self, tgt, query_pos, memory, memory_pad):
        q = self.norms[0](tgt) + query_pos
        tgt = tgt + self.self_attn(q, q, self.norms[0](tgt), need_weights=False)[0]
        q = self.norms[1](tgt) + query_pos
        tgt = tgt + self.cross_attn(q, memory, memory, key_padding_mask=memory_pad, need_weights=False)[0]
        return tgt + self.ff(self.norms[2](tgt))


class DetrForecaster(nn.Module):
    """Context embeddings (B, T, P, D) → forecasts (B, H, P, D) via learned (horizon, preset) queries."""

    def __init__(self, *, dim: int, n_presets: int, horizons_min: tuple[float, ...], width: int = 128,
                 depth: int = 2, heads: int = 4, dropout: float = 0.1, residual: bool = True,
                 damping: torch.Tensor | None = None, base: str = "damped"):
        super().__init__()
        self.residual, self.base = residual, _check_base(base)
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32), persistent=False)
        self.enc = Encodings(width=width, n_presets=n_presets)
        self.proj = nn.Linear(dim, width)
        self.encoder = _encoder(width, depth, heads, dropout)
        self.queries = nn.Parameter(torch.randn(len(horizons_min), n_presets, width) * 0.02)
        self.decoder = nn.ModuleList(QueryDecoderLayer(width=width, heads=heads, dropout=dropout) for _ in range(depth))
        self.head = _zero_head(width, dim)
        self.damping = _damping(damping, len(horizons_min), dim).requires_grad_(residual and self.base == "damped")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = batch["ctx_z"]
        B, T, P, D = ctx.shape
        clock = self.enc.clock(batch["solar_hour"], batch["sun_elev"])  # (B, W)
        tokens = (self.proj(ctx) + self.enc.offset(batch["ctx_dt"])[:, :, None] + self.enc.preset
                  + clock[:, None, None])
        pad = ~rearrange(batch["ctx_mask"], "b t p -> b (t p)")
        memory = self.encoder(rearrange(tokens, "b t p w -> b (t p) w"), src_key_padding_mask=pad)
        query_pos = self.queries + self.enc.offset(self.horizons)[:, None] + self.enc.preset  # (H, P, W)
        query_pos = rearrange(query_pos, "h p w -> 1 (h p) w") + clock[:, None]
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, pad)
        out = rearrange(self.head(tgt), "b (h p) d -> b h p d", p=P)
        return out + _residual(batch, ctx[:, 0], self.damping, self.base) if self.residual else out


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
    """Images at t (B, P, C, S, S) → context tokens; mask tokens (Δt, preset) → forecasts (B, H, P, D)."""

    def __init__(self, *, encoders: nn.ModuleDict, mean: torch.Tensor, std: torch.Tensor, n_presets: int,
                 horizons_min: tuple[float, ...], img_size: int | None = None, width: int = 64, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1, residual: bool = True, finetune: bool = False,
                 damping: torch.Tensor | None = None, base: str = "damped"):
        super().__init__()
        self.encoders, self.img_size, self.residual, self.finetune = encoders, img_size, residual, finetune
        self.base = _check_base(base)
        self.encoders.requires_grad_(finetune)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("horizons", torch.tensor(horizons_min, dtype=torch.float32), persistent=False)
        dim = mean.numel()
        self.enc = Encodings(width=width, n_presets=n_presets)
        self.proj = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.predictor = _encoder(width, depth, heads, dropout)
        self.head = _zero_head(width, dim)
        self.damping = _damping(damping, len(horizons_min), dim).requires_grad_(residual and self.base == "damped")

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoders.train(mode and self.finetune)  # a frozen encoder keeps its eval-mode normalisation
        return self

    def context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "rgb" not in batch:
            if self.finetune:
                raise ValueError("finetune=True needs the images at t in the batch (gather(..., images=True))")
            # Frozen encoders on the frames at t give exactly the exported stage-1 embeddings, which the batch
            # already holds standardised in ctx_z[:, 0]: reading them is the same computation, cached.
            return batch["ctx_z"][:, 0] * batch["ctx_mask"][:, 0, :, None]
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            z = encode_images(self.encoders, batch["rgb"], batch["thermal"], mean=self.mean, std=self.std,
                              img_size=self.img_size)
        return z * batch["ctx_mask"][:, 0, :, None]  # (B, P, D), missing presets zeroed like the stage-1 table

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.context(batch)
        B, P, D = z.shape
        H = len(self.horizons)
        clock = self.enc.clock(batch["solar_hour"], batch["sun_elev"])[:, None]  # (B, 1, W)
        ctx_tokens = self.proj(z) + self.enc.preset + clock
        masks = self.mask_token + self.enc.offset(self.horizons)[:, None] + self.enc.preset  # (H, P, W)
        masks = repeat(masks, "h p w -> b (h p) w", b=B) + clock
        pad = torch.cat([~batch["ctx_mask"][:, 0], torch.zeros(B, H * P, dtype=torch.bool, device=z.device)], 1)
        x = self.predictor(torch.cat([ctx_tokens, masks], dim=1), src_key_padding_mask=pad)
        out = rearrange(self.head(x[:, P:]), "b (h p) d -> b h p d", h=H)
        return out + _residual(batch, z, self.damping, self.base) if self.residual else out


def frozen_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of frozen stage-1 encoders (JEPA, finetune=False): a copy of the stage-1 run's
    encoders.pt, which checkpoints leave out and loading rebuilds from that file."""
    if isinstance(model, JepaForecaster) and not model.finetune:
        return frozenset(f"encoders.{k}" for k in model.encoders.state_dict())
    return frozenset()
