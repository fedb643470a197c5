"""The ViT's self-attention through PyTorch's fused scaled_dot_product_attention.

transformers' BlipAttention computes softmax(QK^T / sqrt(d)) V eagerly: at 384 px it writes a
12 x 577 x 577 score matrix per image and layer, and softmaxes it in a separate pass. The fused
kernel does the same arithmetic without materialising it (FlashAttention-style on GPU, a blocked
kernel on CPU): measured at BLIP-base in bf16 on one CPU core, the whole ViT ran 1.85x faster
(benchmarks/model_levers.py). Same weights and parameter names, so checkpoints and transformers
parity are unchanged; results agree to rounding (tests/test_model_vision_attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.blip.modeling_blip import BlipAttention


class FusedBlipAttention(BlipAttention):
    """BlipAttention with the same parameters; forward via F.scaled_dot_product_attention.

    Returns (output, None): the attention probabilities are never formed (transformers' encoder
    layer discards them)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
        b, t, d = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # scale defaults to 1/sqrt(head_dim), BlipAttention's self.scale; dropout on the
        # probabilities as BlipAttention applies it, in training only
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                                 dropout_p=self.dropout.p if self.training else 0.0)
        return self.projection(context.transpose(1, 2).reshape(b, t, d)), None


def use_fused_attention(vision: nn.Module) -> int:
    """Switch every BlipAttention inside `vision` to FusedBlipAttention, in place (the class only:
    the parameters stay the same tensors). Returns how many were switched."""
    switched = 0
    for module in vision.modules():
        if type(module) is BlipAttention:
            module.__class__ = FusedBlipAttention
            switched += 1
    return switched
