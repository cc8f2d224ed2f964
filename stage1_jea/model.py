"""The stage-1 model: an RGB and a thermal timm backbone, each with its own VICReg projector.

    model = TwoBranch(specs=encoder_specs("resnet18", "resnet18", img_size=64), projector="1024-1024-1024")
    h_rgb, h_thermal, z_rgb, z_thermal = model(rgb, thermal)   # h: (B, D) backbone, z: (B, P_dim) projector

The backbones are what stage 1 exports (`encoders.pt`, embeddings); the projectors exist only for the loss.
`pooled_and_grid(encoder, x, grid=2)` gives the exported pooled vector and the final feature map pooled to a
grid (where in the frame things are, for stage 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sagecast_common.encoders import build_encoder, encoder_kwargs


def encoder_specs(rgb_arch: str, thermal_arch: str, *, img_size: int, rgb_patch: int = 16,
                  thermal_patch: int = 8) -> dict[str, dict[str, Any]]:
    """How to rebuild each backbone (`save_encoders` spec): ViTs get the image size and their own patch."""
    return {
        "rgb": {"arch": rgb_arch, "in_chans": 3,
                "kwargs": encoder_kwargs(rgb_arch, img_size=img_size, patch_size=rgb_patch)},
        "thermal": {"arch": thermal_arch, "in_chans": 1,
                    "kwargs": encoder_kwargs(thermal_arch, img_size=img_size, patch_size=thermal_patch)},
    }


def projector(in_dim: int, dims: str) -> nn.Sequential:
    """VICReg projector: (Linear-BN-ReLU) for every hidden width in `dims` ("8192-8192-8192"), then Linear."""
    widths = [in_dim] + [int(d) for d in dims.split("-")]
    if len(widths) < 2:
        raise ValueError(f"projector dims {dims!r}: need at least one width")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


def feature_dim(encoder: nn.Module) -> int:
    """Width of a headless timm model's output: MobileNetV3/LCNet end in a wider conv head than num_features."""
    return getattr(encoder, "head_hidden_size", None) or encoder.num_features


def pooled_and_grid(encoder: nn.Module, x: torch.Tensor, *, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) = encoder(x) and (B, g*g*C) = the final feature map adaptive-average-pooled to g×g, flattened
    in (row, col, channel) order. ViT tokens (after the prefix tokens) are laid back on their patch grid."""
    fmap = encoder.forward_features(x)
    pooled = encoder.forward_head(fmap)
    if fmap.ndim == 3:  # (B, tokens, C): drop class/register tokens, tokens are row-major patches
        tokens = fmap[:, getattr(encoder, "num_prefix_tokens", 0):]
        side = int(round(tokens.shape[1] ** 0.5))
        fmap = rearrange(tokens, "b (h w) c -> b c h w", h=side, w=side)
    cells = F.adaptive_avg_pool2d(fmap.float(), grid)  # (B, C, g, g)
    return pooled, rearrange(cells, "b c gh gw -> b (gh gw c)")


class TwoBranch(nn.Module):
    def __init__(self, *, specs: dict[str, dict[str, Any]], projector_dims: str):
        super().__init__()
        self.specs = specs
        self.rgb = build_encoder(specs["rgb"]["arch"], in_chans=3, kwargs=specs["rgb"]["kwargs"])
        self.thermal = build_encoder(specs["thermal"]["arch"], in_chans=1, kwargs=specs["thermal"]["kwargs"])
        self.proj_rgb = projector(feature_dim(self.rgb), projector_dims)
        self.proj_thermal = projector(feature_dim(self.thermal), projector_dims)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor):
        B = rgb.shape[0]
        assert thermal.shape[0] == B and rgb.shape[1] == 3 and thermal.shape[1] == 1, (rgb.shape, thermal.shape)
        h_rgb, h_thermal = self.rgb(rgb), self.thermal(thermal)  # (B, D_rgb), (B, D_thermal)
        return h_rgb, h_thermal, self.proj_rgb(h_rgb), self.proj_thermal(h_thermal)
