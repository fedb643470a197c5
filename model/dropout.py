"""BLIP's training-time regularisers: BERT's dropout in the text transformer, stochastic depth
(drop-path) in the ViT.

BLIP's `configs/med_config.json` uses 0.1 on hidden states and attention probabilities; its ViT
has no dropout but a drop-path rate, 0.1 for ViT-L (`create_vit` forces it) and 0 for ViT-B,
ramped linearly over the blocks as timm does. transformers' BLIP vision layers have no drop-path,
so it is added here as forward hooks on each block's attention and MLP branches: the state-dict
names stay transformers' own, and a model in eval mode is untouched (every hook checks `training`).
"""

from __future__ import annotations

import torch
from torch import nn


class _DropPath:
    """Forward hook: zero a branch's output for a random share `rate` of the samples, scale the
    rest by 1 / (1 - rate) (timm's DropPath), in training mode only."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, module: nn.Module, args, output):
        if not module.training or self.rate <= 0.0:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        keep = 1.0 - self.rate
        shape = (hidden.shape[0],) + (1,) * (hidden.dim() - 1)
        mask = hidden.new_empty(shape).bernoulli_(keep).div_(keep)
        return (hidden * mask, *output[1:]) if isinstance(output, tuple) else hidden * mask


def block_rates(rate: float, depth: int) -> list[float]:
    """timm's and BLIP's schedule: 0 at the first block, `rate` at the last."""
    return torch.linspace(0.0, rate, depth, device="cpu").tolist() if depth else []  # cpu: also under a meta-device build


def set_vision_drop_path(vision: nn.Module, rate: float) -> None:
    """(Re)set drop-path on every block of a transformers BlipVisionModel."""
    layers = vision.encoder.layers
    for layer, layer_rate in zip(layers, block_rates(rate, len(layers))):
        for branch in (layer.self_attn, layer.mlp):
            for key, hook in list(branch._forward_hooks.items()):
                if isinstance(hook, _DropPath):
                    del branch._forward_hooks[key]
            if layer_rate > 0.0:
                branch.register_forward_hook(_DropPath(layer_rate))


def set_text_dropout(text_model: nn.Module, hidden: float, attention: float) -> None:
    """BERT's two dropout rates on a transformers BLIP text model (encoder or decoder): attention
    probabilities in `...attention.self.dropout`, every other nn.Dropout on hidden states."""
    for name, module in text_model.named_modules():
        if isinstance(module, nn.Dropout):
            module.p = attention if name.endswith("self.dropout") else hidden
