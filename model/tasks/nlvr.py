"""NLVR2 as BLIP's blip_nlvr.py / nlvr_encoder.py do it: one statement, two images.

The image-grounded encoder runs with a twin cross-attention in every layer: the statement's
queries attend to the left image with one set of projections and to the right image with a
second set (both initialised from the pre-trained cross-attention, as BLIP's loader copies
`self` into `self0` and `self1`); their output projections (`dense0`, `dense1`, likewise copied)
are averaged in the first half of the layers and merged by a new linear layer over their
concatenation in the second half (BLIP: layers 0-5 average, 6-11 merge). A two-layer head on the
[ENC] output classifies true / false.

The MED keeps the left branch (its own cross-attention); `NLVRHead` holds what NLVR2 adds: the
right branch's copies, the merge layers and the classifier.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from model.med import MED


class TwinBranch(nn.Module):
    """One layer's additions: the right image's query/key/value and output projection, and the
    merge layer (second half of the layers only)."""

    def __init__(self, cross: nn.Module, merge: bool, width: int, init_range: float):
        super().__init__()
        self.query = copy.deepcopy(cross.self.query)
        self.key = copy.deepcopy(cross.self.key)
        self.value = copy.deepcopy(cross.self.value)
        self.dense = copy.deepcopy(cross.output.dense)
        self.merge = nn.Linear(2 * width, width) if merge else None
        if self.merge is not None:
            nn.init.normal_(self.merge.weight, std=init_range)
            nn.init.zeros_(self.merge.bias)


class NLVRHead(nn.Module):
    def __init__(self, med: MED):
        super().__init__()
        layers = med.text_encoder.encoder.layer
        width = med.config.text_width
        half = len(layers) // 2
        self.branches = nn.ModuleList(
            TwinBranch(layer.crossattention, merge=i >= half, width=width, init_range=med.config.init_range)
            for i, layer in enumerate(layers))
        self.classifier = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=med.config.init_range)
                nn.init.zeros_(m.bias)


def _attend(query: torch.Tensor, key: nn.Linear, value: nn.Linear, image: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = query.shape
    dh = d // heads
    q = query.view(b, t, heads, dh).transpose(1, 2)
    k = key(image).view(b, image.shape[1], heads, dh).transpose(1, 2)
    v = value(image).view(b, image.shape[1], heads, dh).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)


def nlvr_logits(med: MED, head: NLVRHead, ids: torch.Tensor, mask: torch.Tensor,
                left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(B, 2) false/true logits; left, right: (B, 1 + N, Dv) image embeddings."""
    encoder = med.text_encoder
    ids = ids.clone()
    ids[:, 0] = med.config.tokens.enc
    hidden = encoder.embeddings(input_ids=ids)
    self_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask)
    for layer, twin in zip(encoder.encoder.layer, head.branches):
        hidden, _ = layer.attention(hidden, attention_mask=self_mask)
        cross = layer.crossattention
        heads = cross.self.num_attention_heads
        ctx0 = _attend(cross.self.query(hidden), cross.self.key, cross.self.value, left, heads)
        ctx1 = _attend(twin.query(hidden), twin.key, twin.value, right, heads)
        out0, out1 = cross.output.dense(ctx0), twin.dense(ctx1)
        merged = twin.merge(torch.cat([out0, out1], dim=-1)) if twin.merge is not None else (out0 + out1) / 2
        hidden = cross.output.LayerNorm(cross.output.dropout(merged) + hidden)
        hidden = layer.feed_forward_chunk(hidden)
    return head.classifier(hidden[:, 0, :])


def nlvr_loss(med: MED, head: NLVRHead, pixel_left: torch.Tensor, pixel_right: torch.Tensor, ids: torch.Tensor,
              mask: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    embeds = med.encode_image(torch.cat([pixel_left, pixel_right]))  # one ViT pass for both, as BLIP
    left, right = embeds.split(pixel_left.shape[0])
    logits = nlvr_logits(med, head, ids, mask, left, right)
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "nlvr": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean().detach()}
