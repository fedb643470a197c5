"""One training step of the MED: pre-training (ITC+ITM+LM), captioner (LM), filter (ITC+ITM).

Plain objects over plain tensors: a Ray Train loop (pipelines/) builds a `TrainingTask`, calls
`step(batch)` and back-propagates `losses["loss"]`; the optimizer, the schedule and checkpoint I/O
are its own. The batch is a dict of tensors:

  pixel_values   (B, 3, H, W)
  input_ids      (B, T) [CLS] ... [SEP] pad, as the tokenizer writes them
  attention_mask (B, T)
  image_ids      (B,) long; rows with the same id show the same image (needed by ITC/ITM)

Which pairs are positives of ITC and ITM depends on the task, as in BLIP's code:
  "pair"   only the (image, text) pair of a row; every other text, also another caption of the
           same image, and every queued feature are negatives (BLIP_Pretrain: a one-hot diagonal,
           hard negatives drawn from the whole batch but the row itself);
  "image"  every text of the same image id, in the batch and in the queue (BLIP_Retrieval's
           fine-tune, through idx_queue; its hard negatives never show the same image).
Pre-training defaults to "pair", the filter's fine-tune to "image".
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from model import losses as L
from model.med import MED
from model.momentum import MomentumEncoders

TaskKind = Literal["pretrain", "captioner", "filter"]
Positives = Literal["pair", "image"]
DEFAULT_POSITIVES: dict[str, Positives] = {"pretrain": "pair", "captioner": "pair", "filter": "image"}
LOSSES: dict[str, tuple[str, ...]] = {
    "pretrain": ("itc", "itm", "lm"),  # equal weights, as BLIP
    "captioner": ("lm",),
    "filter": ("itc", "itm"),
}
ALPHA = 0.4  # BLIP's distillation weight


def ramped_alpha(step: int, ramp_steps: int, alpha: float = ALPHA) -> float:
    """BLIP ramps alpha linearly from 0 over the first two epochs: pass ramp_steps = 2 epochs."""
    if ramp_steps <= 0:
        return alpha
    return alpha * min(1.0, step / ramp_steps)


class TrainingTask(nn.Module):
    """The MED, its momentum encoders (when ITC is trained) and the losses of one task.

    An `nn.Module` so that `.to()`, `.train()` and `state_dict()` cover the momentum encoders
    and queues along with the MED.
    gather: concatenates a tensor over data-parallel ranks before it enters the queue (BLIP
    all-gathers; the default keeps the local batch).
    """

    def __init__(
        self,
        med: MED,
        kind: TaskKind = "pretrain",
        queue_size: int = 57_600,
        momentum: float = 0.995,
        prompt_length: int = 0,
        label_smoothing: float = L.LM_LABEL_SMOOTHING,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        positives: Positives | None = None,
    ):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown task {kind!r}; known: {', '.join(LOSSES)}")
        self.med = med
        self.kind = kind
        self.losses = LOSSES[kind]
        self.momentum = MomentumEncoders(med, queue_size, momentum) if "itc" in self.losses else None
        self.prompt_length = prompt_length
        self.label_smoothing = label_smoothing
        self.gather = gather
        self.positives = positives or DEFAULT_POSITIVES[kind]
        if self.positives not in ("pair", "image"):
            raise ValueError(f"unknown positives {self.positives!r}; known: pair, image")

    def step(
        self, batch: dict[str, torch.Tensor], alpha: float = ALPHA, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named losses of one batch; "loss" is their sum (what to back-propagate).

        alpha: the distillation weight, ramped by the caller (`ramped_alpha`).
        generator: drives the hard-negative draws (tests fix it).
        """
        med = self.med
        pixel_values, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        out: dict[str, torch.Tensor] = {}
        image_embeds = med.encode_image(pixel_values)  # (B, 1 + N, Dv)

        if "itc" in self.losses:
            image_ids = batch["image_ids"].to(ids.device)
            with torch.no_grad():
                med.temp.clamp_(L.TEMP_MIN, L.TEMP_MAX)  # BLIP clamps the parameter in place
            image_feat = med.image_feature(image_embeds)
            text_feat = med.text_feature(med.encode_text(ids, mask))
            # BLIP updates the momentum encoders at the start of the step, from the weights that
            # the previous optimizer step left.
            assert self.momentum is not None
            self.momentum.update(med)
            image_feat_m, text_feat_m = self.momentum.features(pixel_values, ids, mask)
            image_keys, text_keys, key_ids = self.momentum.keys(image_feat_m, text_feat_m, image_ids)
            match_ids = image_ids
            if self.positives == "pair":  # each row its own id; queued keys (id -1) match nothing
                match_ids = torch.arange(ids.shape[0], device=ids.device)
                key_ids = torch.cat([match_ids, key_ids.new_full((key_ids.shape[0] - ids.shape[0],), -1)])
            itc = L.itc_loss(
                image_feat, text_feat, image_keys, text_keys, match_ids, key_ids, med.temp, alpha,
                image_feat_m=image_feat_m, text_feat_m=text_feat_m,
            )
            out["itc"] = itc["itc"]
            out["temp"] = med.temp.detach().clone()

            batch_size = ids.shape[0]
            neg_text, neg_image = L.sample_hard_negatives(
                itc["sim_i2t"][:, :batch_size], itc["sim_t2i"][:, :batch_size], match_ids, generator
            )
            pair_ids, pair_mask, pair_images, labels = L.itm_pairs(ids, mask, image_embeds, neg_text, neg_image)
            out.update(L.itm_loss(med.itm_logits(pair_ids, pair_mask, pair_images), labels))

            gather = self.gather or (lambda t: t)
            self.momentum.enqueue(gather(image_feat_m), gather(text_feat_m), gather(image_ids))

        if "lm" in self.losses:
            targets = L.lm_targets(ids, mask, med.config.tokens.pad, self.prompt_length)
            logits = med.lm_logits(ids, mask, image_embeds)
            out.update(L.lm_loss(logits, targets, self.label_smoothing))

        out["loss"] = sum(out[name] for name in self.losses)
        return out
