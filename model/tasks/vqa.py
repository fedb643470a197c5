"""VQA as BLIP's blip_vqa.py does it: the image-grounded encoder reads the question ([ENC]
first, cross-attention over the image), the decoder writes the answer ([DEC] first) with
cross-attention over the question's states.

Training: the LM loss of every listed answer of a question, each weighted by its share of the
question's answers (BLIP: count / number of annotators), summed and divided by the number of
questions. Inference: by generation (beam search, BLIP: 3 beams, max 10 tokens, min 1), or by
ranking an answer list (BLIP's rank_answer: the k answers whose first token is likeliest, then
the one with the highest log-likelihood over all its tokens).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from model.losses import IGNORE_INDEX
from model.med import MED


def check_widths(med: MED) -> None:
    if med.config.vision_width != med.config.text_width:
        # the decoder's cross-attention was built for the ViT's width, and reads the question's
        raise ValueError(f"VQA needs the ViT and text widths equal (BLIP's ViT-B/BERT-base): "
                         f"{med.config.vision_width} != {med.config.text_width}")


def answer_weights(answers: Sequence[str]) -> list[tuple[str, float]]:
    """Unique answers with weight count / len(answers), in first-seen order (BLIP's VQA data)."""
    counts = Counter(answers)
    return [(a, counts[a] / len(answers)) for a in dict.fromkeys(answers)]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: min(#annotators who gave the prediction / 3, 1), `answers` holding one entry
    per annotator (VQAv2: 10, with repeats). A list without repeats is read as accepted
    alternatives, each fully right (the toy world lists the canonical answer and its synonyms
    once each): a match scores 1. (A VQAv2 question whose 10 annotators all disagreed would score
    1 here where VQA scores 1/3: such questions are rare.)"""
    if not answers:
        raise ValueError("a VQA question without answers cannot be scored")
    given = [a.strip().lower() for a in answers]
    matches = given.count(prediction.strip().lower())
    if len(set(given)) == len(given):
        return float(matches > 0)
    return min(1.0, matches / 3)


def question_states(med: MED, image_embeds: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tq, D): the image-grounded encoder over the question."""
    return med.encode_multimodal(q_ids, q_mask, image_embeds)


def decoder_logits(med: MED, a_ids: torch.Tensor, a_mask: torch.Tensor, states: torch.Tensor,
                   states_mask: torch.Tensor) -> torch.Tensor:
    """(R, Ta, V): the decoder over answers [DEC] ... [SEP], cross-attending to the question."""
    ids = a_ids.clone()
    ids[:, 0] = med.config.tokens.dec
    return med.text_decoder(input_ids=ids, attention_mask=a_mask, encoder_hidden_states=states,
                            encoder_attention_mask=states_mask, is_decoder=True, return_logits=False).logits


def answer_logprob(logits: torch.Tensor, a_ids: torch.Tensor, a_mask: torch.Tensor,
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """(R,) per answer: minus the summed token cross-entropy of [DEC]-shifted targets (BLIP's
    reduction='none' sums over tokens)."""
    targets = a_ids.masked_fill(a_mask == 0, IGNORE_INDEX)[:, 1:]
    shifted = logits[:, :-1, :]
    per_token = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                                ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="none")
    return -per_token.view(targets.shape).sum(dim=1)


def vqa_loss(med: MED, pixel_values: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor,
             a_ids: torch.Tensor, a_mask: torch.Tensor, owner: torch.Tensor, weights: torch.Tensor,
             label_smoothing: float = 0.1) -> dict[str, torch.Tensor]:
    """owner (R,): the question of each answer row; weights (R,): its weight."""
    states = question_states(med, med.encode_image(pixel_values), q_ids, q_mask)
    logits = decoder_logits(med, a_ids, a_mask, states[owner], q_mask[owner])
    loss = (weights * -answer_logprob(logits, a_ids, a_mask, label_smoothing)).sum() / pixel_values.shape[0]
    return {"loss": loss, "vqa": loss.detach()}


@torch.inference_mode()
def rank_answers(med: MED, states: torch.Tensor, states_mask: torch.Tensor, answer_ids: torch.Tensor,
                 answer_mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) index into the answer list of each question's answer (BLIP's rank_answer)."""
    b, n = states.shape[0], answer_ids.shape[0]
    k = min(k, n)
    start = torch.full((b, 1), med.config.tokens.dec, dtype=torch.long, device=states.device)
    first = decoder_logits(med, start, torch.ones_like(start), states, states_mask)[:, 0, :]
    prob_first = first.softmax(dim=-1).index_select(1, answer_ids[:, 1])  # (B, N)
    _, top = prob_first.topk(k, dim=1)  # (B, k)
    ids, mask = answer_ids[top.flatten()], answer_mask[top.flatten()]
    logits = decoder_logits(med, ids, mask, states.repeat_interleave(k, 0), states_mask.repeat_interleave(k, 0))
    scores = answer_logprob(logits, ids, mask).view(b, k)
    return top.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)


@torch.inference_mode()
def generate_answers(med: MED, tokenizer, states: torch.Tensor, num_beams: int = 3, max_length: int = 10,
                     min_length: int = 1) -> list[str]:
    """Beam search from [DEC] over the question's states; as BLIP, every question position is
    attended (its generate() passes an all-ones mask)."""
    from model.generation import GenerationSettings, beam_search, decoder_prefix

    settings = GenerationSettings(decoding="beam", num_beams=num_beams, max_length=max_length, min_length=min_length,
                                  prompt="")
    prefix = decoder_prefix(tokenizer, "", med.config.tokens)
    rows = beam_search(med, states, prefix, [0] * states.shape[0], settings, use_cache=True)
    sep = med.config.tokens.sep
    out = []
    for hyps in rows:
        body = hyps[0][len(prefix):]
        out.append(tokenizer.decode(body[: body.index(sep)] if sep in body else body))
    return out
