"""The filter's scores: ITM probability and ITC similarity of many captions per image.

CapFilt scores the web caption and every synthetic caption of an image against it. The image
goes through the ViT once, however many captions it has, and the image-grounded encoder projects
its cross-attention keys and values once for all of them (MED.itm_logits_grouped); the captions
of all images are scored together, in chunks that cut between images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from model.med import MED


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class ScoreResult:
    """Per image, per caption (same shape as the captions given).

    itm: softmax probability of "matched" from the ITM head ([ENC] first, as BLIP trains it).
    itc: cosine similarity of the unit ITC features (not divided by the temperature).
    """

    itm: list[list[float]]
    itc: list[list[float]]


def score_captions(
    med: MED,
    tokenizer: TextEncoder,
    pixel_values: torch.Tensor,
    captions: Sequence[Sequence[str]],
    max_length: int | None = None,
    chunk_size: int = 256,
    shared_cross_kv: bool = True,
) -> ScoreResult:
    """Score captions[i] (any number, zero included) against image i of pixel_values (B, 3, H, W).

    max_length: token limit of a caption, [CLS] and [SEP] included (default: the model's
    max_text_len; BLIP pads ITM text to 35). chunk_size bounds the caption pairs per text pass.
    shared_cross_kv=False projects the image's cross-attention K/V once per caption, as one ITM
    call per caption does (the benchmark's baseline); both give the same scores up to rounding.
    """
    if len(captions) != pixel_values.shape[0]:
        raise ValueError(f"{pixel_values.shape[0]} images but captions for {len(captions)}")
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    texts = [c for caps in captions for c in caps]
    itm_flat: list[float] = []
    itc_flat: list[float] = []
    if texts:
        max_length = max_length or med.config.max_text_len
        was_training = med.training
        med.eval()
        try:
            with torch.inference_mode():
                itm_flat, itc_flat = _score_flat(med, tokenizer, pixel_values, owner, texts, max_length, chunk_size,
                                                 shared_cross_kv)
        finally:
            med.train(was_training)
    itm, itc, start = [], [], 0
    for caps in captions:
        itm.append(itm_flat[start : start + len(caps)])
        itc.append(itc_flat[start : start + len(caps)])
        start += len(caps)
    return ScoreResult(itm=itm, itc=itc)


def _score_flat(
    med: MED, tokenizer: TextEncoder, pixel_values: torch.Tensor,
    owner: list[int], texts: list[str], max_length: int, chunk_size: int, shared_cross_kv: bool,
) -> tuple[list[float], list[float]]:
    device = pixel_values.device
    # Only the images that have a caption go through the ViT, each once.
    images = sorted(set(owner))
    slot = {image: j for j, image in enumerate(images)}
    image_embeds = med.encode_image(pixel_values[images])  # (B', 1 + N, Dv)
    image_feat = med.image_feature(image_embeds).float()  # (B', E)
    pair_image = torch.tensor([slot[i] for i in owner], device=device)  # (M,), non-decreasing
    itm: list[torch.Tensor] = []
    itc: list[torch.Tensor] = []
    for start, stop in _whole_image_chunks([slot[i] for i in owner], chunk_size):
        ids, mask = tokenizer.encode(texts[start:stop], max_length)
        ids, mask = torch.as_tensor(ids, device=device), torch.as_tensor(mask, device=device)
        which = pair_image[start:stop]
        text_feat = med.text_feature(med.encode_text(ids, mask)).float()  # (m, E)
        itc.append((image_feat[which] * text_feat).sum(dim=-1))
        if shared_cross_kv:  # each image's cross-attention K/V once for all its captions in the chunk
            first, last = int(which[0]), int(which[-1])
            logits = med.itm_logits_grouped(ids, mask, image_embeds[first : last + 1], which - first)  # (m, 2)
        else:
            logits = med.itm_logits(ids, mask, image_embeds[which])
        itm.append(logits.float().softmax(dim=-1)[:, 1])
    return torch.cat(itm).tolist(), torch.cat(itc).tolist()


def _whole_image_chunks(pair_image: list[int], chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most chunk_size captions that cut between images where they
    can (an image with more than chunk_size captions is split, and its K/V computed per piece)."""
    chunks, start = [], 0
    while start < len(pair_image):
        stop = min(start + chunk_size, len(pair_image))
        if stop < len(pair_image) and pair_image[stop] == pair_image[stop - 1]:
            cut = stop
            while cut > start and pair_image[cut - 1] == pair_image[stop]:
                cut -= 1
            stop = cut if cut > start else stop  # else one image alone exceeds the chunk: split it
        chunks.append((start, stop))
        start = stop
    return chunks
