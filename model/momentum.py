"""Momentum encoders and feature queues for ITC's momentum distillation (BLIP, after ALBEF).

`MomentumEncoders` holds an exponential moving average of the MED's unimodal encoders (ViT,
vision_proj, text encoder, text_proj) and three FIFO queues of their features (image, text, image
id). It is an `nn.Module` whose queues are buffers, so one `state_dict` resumes training exactly.
It lives outside the MED: the captioner and filter checkpoints do not need it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from model.med import MED

MOMENTUM = 0.995  # BLIP's EMA factor
BASE_QUEUE_SIZE = 57_600  # BLIP's queue for the base model


class MomentumEncoders(nn.Module):
    def __init__(self, med: MED, queue_size: int = BASE_QUEUE_SIZE, momentum: float = MOMENTUM):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.cls_id = med.config.tokens.cls
        self.vision = copy.deepcopy(med.vision)
        self.vision_proj = copy.deepcopy(med.vision_proj)
        self.text_encoder = copy.deepcopy(med.text_encoder)
        self.text_proj = copy.deepcopy(med.text_proj)
        # The momentum text encoder only ever runs unimodally (ITC): its copy of the
        # cross-attention blocks would be dead weight (a fifth of BERT-base) in memory and in
        # every checkpoint, so it is dropped; `_pairs` skips it when averaging.
        for layer in self.text_encoder.encoder.layer:
            if hasattr(layer, "crossattention"):
                del layer.crossattention
        for p in self.parameters():
            p.requires_grad_(False)

        embed_dim = med.config.embed_dim
        self.register_buffer("image_queue", torch.zeros(queue_size, embed_dim))
        self.register_buffer("text_queue", torch.zeros(queue_size, embed_dim))
        self.register_buffer("id_queue", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # Unlike BLIP (random unit vectors in the empty slots), only real features are used as
        # keys: `filled` counts the slots that hold one.
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.image_queue.shape[0]

    # ---- EMA ----------------------------------------------------------------------------------
    def _pairs(self, med: MED) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(momentum params, online params), matched by name under each encoder."""
        mom, online = [], []
        for name in ("vision", "vision_proj", "text_encoder", "text_proj"):
            source = dict(getattr(med, name).named_parameters())
            for pname, p_m in getattr(self, name).named_parameters():
                mom.append(p_m)
                online.append(source[pname])
        return mom, online

    @torch.no_grad()
    def update(self, med: MED) -> None:
        """p_m <- m * p_m + (1 - m) * p, for every momentum parameter."""
        mom, online = self._pairs(med)
        torch._foreach_mul_(mom, self.momentum)
        torch._foreach_add_(mom, [p.detach() for p in online], alpha=1.0 - self.momentum)

    # ---- features -------------------------------------------------------------------------------
    @torch.no_grad()
    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit ITC features of the momentum encoders: (B, E) image, (B, E) text."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0, :]), dim=-1)
        ids = input_ids.clone()
        ids[:, 0] = self.cls_id
        text_embeds = self.text_encoder(input_ids=ids, attention_mask=attention_mask, is_decoder=False).last_hidden_state
        text_feat = F.normalize(self.text_proj(text_embeds[:, 0, :]), dim=-1)
        return image_feat, text_feat

    # ---- queues ---------------------------------------------------------------------------------
    def queued(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image feats (n, E), text feats (n, E), image ids (n,)) of the n filled slots."""
        n = int(self.queue_filled)
        return self.image_queue[:n], self.text_queue[:n], self.id_queue[:n]

    def keys(
        self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, image_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ITC keys: this batch's momentum features first, then the queue (BLIP's order)."""
        q_image, q_text, q_ids = self.queued()
        return (
            torch.cat([image_feat_m, q_image]),
            torch.cat([text_feat_m, q_text]),
            torch.cat([image_ids, q_ids]),
        )

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Write a batch at the pointer, wrapping around the end.

        BLIP asserts queue_size % batch == 0 so that a batch never straddles the end; writing
        through modular indices lifts that: any batch size works, and the queue always holds the
        most recent min(seen, size) features. A batch larger than the queue keeps its last rows.
        """
        size = self.queue_size
        n = image_feat.shape[0]
        if n > size:
            image_feat, text_feat, image_ids = image_feat[-size:], text_feat[-size:], image_ids[-size:]
            n = size
        slots = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)) % size
        self.image_queue[slots] = image_feat.to(self.image_queue.dtype)
        self.text_queue[slots] = text_feat.to(self.text_queue.dtype)
        self.id_queue[slots] = image_ids.to(torch.long)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + n, max=size))
