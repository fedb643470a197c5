"""The ViT's fused attention computes what transformers' eager BlipAttention computes."""

from __future__ import annotations

import pytest
import torch
from transformers.models.blip.modeling_blip import BlipAttention, BlipVisionModel

from model.med import MED
from model.vision_attention import FusedBlipAttention, use_fused_attention
from model_helpers import small_config, tiny_tokenizer


@pytest.fixture(scope="module")
def cfg():
    return small_config(tiny_tokenizer())


def test_the_med_vit_uses_the_fused_attention_in_every_layer(cfg):
    med = MED(cfg)
    attentions = [m for m in med.vision.modules() if isinstance(m, BlipAttention)]
    assert len(attentions) == cfg.vision_layers
    assert all(type(m) is FusedBlipAttention for m in attentions)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_equals_transformers_eager_vit(cfg, dtype, tol):
    torch.manual_seed(0)
    eager = BlipVisionModel(cfg.vision_config()).eval().to(dtype)
    fused = BlipVisionModel(cfg.vision_config()).eval().to(dtype)
    fused.load_state_dict(eager.state_dict())
    assert use_fused_attention(fused) == cfg.vision_layers
    pixels = torch.randn(3, 3, cfg.image_size, cfg.image_size).to(dtype)
    with torch.no_grad():
        a = eager(pixel_values=pixels).last_hidden_state.float()
        b = fused(pixel_values=pixels).last_hidden_state.float()
    scale = a.abs().max()
    assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max() / scale)


def test_fused_attention_trains_like_eager_without_dropout(cfg):
    """Same gradients in training mode (dropout 0 in the config), so fine-tuning is unchanged."""
    torch.manual_seed(0)
    eager = BlipVisionModel(cfg.vision_config()).train()
    fused = BlipVisionModel(cfg.vision_config()).train()
    fused.load_state_dict(eager.state_dict())
    use_fused_attention(fused)
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    grads = []
    for model in (eager, fused):
        model.zero_grad()
        model(pixel_values=pixels).last_hidden_state.square().mean().backward()
        grads.append(model.encoder.layers[0].self_attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
