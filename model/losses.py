"""BLIP's three pre-training losses, each a function of the model's outputs.

  itc_loss               image-text contrastive, learned temperature, momentum-distilled soft targets
  sample_hard_negatives  ITM negatives drawn in proportion to ITC similarity, never of the same image
  itm_pairs / itm_loss   binary matched/unmatched over B positives + 2B hard negatives
  lm_loss                next-token prediction with label smoothing, pad and prompt masked out

Every function returns plain tensors or a dict of named losses; which model calls produce the
inputs is `model/pretrain_task.py`'s business. Positives are defined by the ids passed in: image
ids give BLIP's retrieval fine-tune (several captions of one image in a batch or in the queue are
all positives), one id per row gives BLIP's pre-training (the pair itself only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMP_MIN, TEMP_MAX = 0.001, 0.5  # BLIP clamps its learned temperature to this range
LM_LABEL_SMOOTHING = 0.1
IGNORE_INDEX = -100  # cross_entropy's default ignore_index


def positive_mask(image_ids: torch.Tensor, key_image_ids: torch.Tensor) -> torch.Tensor:
    """(B,), (N,) -> (B, N) bool: True where query row and key column show the same image."""
    return image_ids.view(-1, 1) == key_image_ids.view(1, -1)


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_keys: torch.Tensor,
    text_feat_keys: torch.Tensor,
    image_ids: torch.Tensor,
    key_image_ids: torch.Tensor,
    temp: torch.Tensor,
    alpha: float,
    image_feat_m: torch.Tensor | None = None,
    text_feat_m: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Image-text contrastive loss with momentum distillation.

    image_feat, text_feat:          (B, E) unit features of the online encoders (with grad).
    image_feat_keys, text_feat_keys: (N, E) the keys: the momentum features of this batch first,
                                    then the queue (BLIP contrasts against momentum keys only).
    image_ids (B,), key_image_ids (N,): positives are the keys that show the same image.
    image_feat_m, text_feat_m:      (B, E) momentum features of this batch; with alpha > 0 their
                                    softmaxed similarity is mixed into the targets.
    Returns {"itc": loss, "sim_i2t": (B, N), "sim_t2i": (B, N)}; the similarities are detached,
    for the hard-negative sampler.
    """
    temp = temp.clamp(TEMP_MIN, TEMP_MAX)
    pos = positive_mask(image_ids, key_image_ids).to(image_feat.dtype)  # (B, N)
    # Several keys may be positives (captions of one image): spread the one-hot mass over them.
    hard_targets = pos / pos.sum(dim=1, keepdim=True)

    with torch.no_grad():
        if alpha > 0:
            if image_feat_m is None or text_feat_m is None:
                raise ValueError("itc_loss: alpha > 0 needs the momentum features of the batch")
            sim_i2t_m = image_feat_m @ text_feat_keys.t() / temp
            sim_t2i_m = text_feat_m @ image_feat_keys.t() / temp
            i2t_targets = alpha * sim_i2t_m.softmax(dim=1) + (1 - alpha) * hard_targets
            t2i_targets = alpha * sim_t2i_m.softmax(dim=1) + (1 - alpha) * hard_targets
        else:
            i2t_targets = t2i_targets = hard_targets

    sim_i2t = image_feat @ text_feat_keys.t() / temp  # (B, N)
    sim_t2i = text_feat @ image_feat_keys.t() / temp  # (B, N)
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * i2t_targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * t2i_targets).sum(dim=1).mean()
    return {"itc": (loss_i2t + loss_t2i) / 2, "sim_i2t": sim_i2t.detach(), "sim_t2i": sim_t2i.detach()}


def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative text per image and one negative image per text, from the local batch.

    sim_i2t[i, j]: image of row i vs text of row j; sim_t2i[j, i]: text j vs image i; both (B, B).
    A candidate is drawn with probability softmax(sim) restricted to the rows that show another
    image: the positive AND every other caption of the same image have weight exactly zero (the
    softmax runs over the allowed entries only, so no weight underflows to zero by accident).
    Returns (neg_text_for_image (B,), neg_image_for_text (B,)) as row indices; -1 where a row has
    no allowed candidate (every row of the batch shows its image).
    """
    if sim_i2t.shape[0] != sim_i2t.shape[1] or sim_t2i.shape != sim_i2t.shape:
        raise ValueError(f"sample_hard_negatives: expected two (B, B) matrices, got {tuple(sim_i2t.shape)}, {tuple(sim_t2i.shape)}")
    same_image = positive_mask(image_ids, image_ids)  # (B, B), symmetric
    return _draw(sim_i2t, same_image, generator), _draw(sim_t2i, same_image, generator)


def _draw(sim: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    allowed = ~forbidden
    has_candidate = allowed.any(dim=1)
    logits = sim.detach().float().masked_fill(forbidden, float("-inf"))
    # Rows without a candidate get uniform dummy weights so that multinomial accepts them; their
    # draw is then replaced by -1.
    logits[~has_candidate] = 0.0
    weights = logits.softmax(dim=1)
    picks = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.where(has_candidate, picks, torch.full_like(picks, -1))


def itm_pairs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_embeds: torch.Tensor,
    neg_text_for_image: torch.Tensor,
    neg_image_for_text: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the ITM batch: B positives, then (negative image, text), then (image, negative text).

    Rows whose sampler returned -1 are left out. Returns (ids, mask, image_embeds, labels), with
    label 1 = matched (index 1 of `MED.itm_logits`).
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    texts_a = rows[neg_image_for_text >= 0]  # texts paired with a negative image
    images_b = rows[neg_text_for_image >= 0]  # images paired with a negative text
    text_idx = torch.cat([rows, texts_a, neg_text_for_image[images_b]])
    image_idx = torch.cat([rows, neg_image_for_text[texts_a], images_b])
    labels = torch.cat([torch.ones_like(rows), torch.zeros_like(texts_a), torch.zeros_like(images_b)])
    return input_ids[text_idx], attention_mask[text_idx], image_embeds[image_idx], labels


def itm_loss(itm_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """(M, 2) logits and (M,) labels -> {"itm": cross-entropy, "itm_acc": accuracy (detached)}."""
    loss = F.cross_entropy(itm_logits, labels)
    acc = (itm_logits.detach().argmax(dim=1) == labels).float().mean()
    return {"itm": loss, "itm_acc": acc}


def lm_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int, prompt_length: int = 0) -> torch.Tensor:
    """(B, T) targets: the ids, with pad and the first `prompt_length` positions ignored.

    `prompt_length` counts the decoder's first token too: for "[DEC] a picture of" it is 4, as in
    BLIP (`len(tokenizer(prompt).input_ids) - 1`, the [SEP] dropped).
    """
    targets = input_ids.masked_fill((attention_mask == 0) | (input_ids == pad_id), IGNORE_INDEX)
    if prompt_length > 0:
        targets[:, :prompt_length] = IGNORE_INDEX
    return targets


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = LM_LABEL_SMOOTHING,
) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy: logits (B, T, V) at position t predict targets[:, t + 1].

    Averaged over the tokens that count (BLIP's reduction="mean"), smoothed by 0.1 as BLIP does.
    """
    shifted = logits[:, :-1, :]
    labels = targets[:, 1:]
    if not (labels != IGNORE_INDEX).any():
        # Every target masked (e.g. a prompt as long as the captions): cross_entropy's mean over
        # no tokens is 0/0 = NaN, which would poison the weights; there is nothing to learn.
        return {"lm": shifted.sum() * 0.0}
    loss = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1),
        ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing,
    )
    return {"lm": loss}
