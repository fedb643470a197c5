"""Visual dialog (VisDial-style answer ranking), as the BLIP paper describes it (§5.5); BLIP
released no code for it, so these are our choices:

- The image-grounded encoder reads the caption ([ENC] first, cross-attention over the image);
  the image's tokens and the caption's states, concatenated, are what the dialog encoder
  cross-attends to (the paper: "we concatenate image and caption embeddings, and pass them to
  the dialog encoder through cross-attention").
- The dialog encoder is the same text encoder (no second copy): its text is the candidate
  answer's round, question and answer first, then the earlier rounds newest first, so that
  truncation drops the oldest history rather than the answer.
- Each candidate is scored by the ITM head (index 1 = true), trained with ITM's cross-entropy
  on the true answer and wrong candidates of the same round (the paper: "trained with the ITM
  loss to discriminate whether the answer is true or false").
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from model.med import MED


def dialog_text(question: str, answer: str, history: Sequence[tuple[str, str]]) -> str:
    """The dialog encoder's text for one candidate answer."""
    past = " ; ".join(f"{q} {a}" for q, a in reversed(history))
    return f"{question} {answer}" + (f" ; {past}" if past else "")


def context_embeds(med: MED, image_embeds: torch.Tensor, c_ids: torch.Tensor, c_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1 + N + Tc, D) image tokens then the caption's image-grounded states, and their mask."""
    if med.config.vision_width != med.config.text_width:
        raise ValueError(f"visual dialog concatenates image and caption states: widths {med.config.vision_width} "
                         f"and {med.config.text_width} differ")
    caption = med.encode_multimodal(c_ids, c_mask, image_embeds)
    image_mask = torch.ones(image_embeds.shape[:2], dtype=c_mask.dtype, device=c_mask.device)
    return torch.cat([image_embeds, caption], dim=1), torch.cat([image_mask, c_mask], dim=1)


def dialog_logits(med: MED, ids: torch.Tensor, mask: torch.Tensor, context: torch.Tensor,
                  context_mask: torch.Tensor) -> torch.Tensor:
    """(R, 2) false/true logits of each candidate text against its row's context."""
    ids = ids.clone()
    ids[:, 0] = med.config.tokens.enc
    out = med.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=context,
                           encoder_attention_mask=context_mask, is_decoder=False).last_hidden_state
    return med.itm_head(out[:, 0, :])


def dialog_loss(med: MED, pixel_values: torch.Tensor, c_ids: torch.Tensor, c_mask: torch.Tensor,
                ids: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor, labels: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """owner (R,): the image/caption row of each candidate text; labels (R,): 1 true, 0 false."""
    context, context_mask = context_embeds(med, med.encode_image(pixel_values), c_ids, c_mask)
    logits = dialog_logits(med, ids, mask, context[owner], context_mask[owner])
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "dialog": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean().detach()}
