"""Contract of every encoder the presets and README use: (B, D) features, finite, backward reaches every
weight, for both the RGB (3-channel) and the thermal (1-channel) branch, at a small image size."""

from __future__ import annotations

import pytest
import torch

from sagecast_common.encoders import build_encoder, encoder_kwargs
from stage1_jea.model import feature_dim

SUPPORTED = ["resnet10t", pytest.param("resnet50", marks=pytest.mark.slow), "mobilenetv3_small_100",
             "vit_tiny_patch16_224"]


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("arch", SUPPORTED)
def test_encoder_contract(arch, in_chans):
    torch.manual_seed(0)
    model = build_encoder(arch, in_chans=in_chans, kwargs=encoder_kwargs(arch, img_size=32, patch_size=8))
    x = torch.randn(2, in_chans, 32, 32)
    out = model(x)
    assert out.shape == (2, feature_dim(model))  # the width the projector is built for
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
