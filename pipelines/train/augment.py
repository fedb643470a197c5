"""Training-time image augmentation that keeps captions true, and the batch collation.

Captions of the toy world (and of real data) name left and right, colours, sizes, places and
counts, so there is no horizontal flip, no colour jitter and only a mild random resized crop (the
`crop_scale_min` setting; BLIP's 0.2 would cut objects out of the picture and move their place).
Randomness comes from a `torch.Generator` that the loop checkpoints, so a resumed job draws the
same crops it would have drawn.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from model.caption_text import pre_caption
from model.config import MEDConfig


def random_resized_crop(
    images: torch.Tensor, scale_min: float, generator: torch.Generator, ratio: tuple[float, float] = (0.9, 1.1)
) -> torch.Tensor:
    """(B, 3, S, S) float -> same shape: each image cropped to a random box of area share in
    [scale_min, 1] and aspect ratio in `ratio`, then resized back to S (bilinear)."""
    if scale_min >= 1.0:
        return images
    b, _, h, w = images.shape
    out = torch.empty_like(images)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for i in range(b):
        r = torch.rand(4, generator=generator).tolist()
        area = (scale_min + (1.0 - scale_min) * r[0]) * h * w
        aspect = math.exp(log_lo + (log_hi - log_lo) * r[1])
        ch = min(h, max(1, round(math.sqrt(area / aspect))))
        cw = min(w, max(1, round(math.sqrt(area * aspect))))
        top = int(r[2] * (h - ch + 1)) if h > ch else 0
        left = int(r[3] * (w - cw + 1)) if w > cw else 0
        crop = images[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def normalise(images_uint8: torch.Tensor, config: MEDConfig) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 with the model's mean and std."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.image_mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def image_id(key: str) -> int:
    """A stable int64 for an image key (ITC/ITM positives are pairs of the same image)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def collate(
    batch: dict[str, np.ndarray],
    *,
    config: MEDConfig,
    tokenizer,
    max_text_len: int,
    generator: torch.Generator | None,
    crop_scale_min: float,
    prefix: str = "",
    caption_max_words: int | None = None,
) -> dict[str, torch.Tensor]:
    """A decoded batch (image uint8, caption, image_key) -> the tensors a training step takes.

    prefix: text put before every caption (the captioner's prompt), after the caption's clean-up.
    caption_max_words: clean every caption with BLIP's pre_caption, keeping this many words (None:
    as read)."""
    images = normalise(torch.from_numpy(np.ascontiguousarray(batch["image"])), config)
    if generator is not None:
        images = random_resized_crop(images, crop_scale_min, generator)
    captions = [str(c) for c in batch["caption"]]
    if caption_max_words is not None:
        captions = [pre_caption(c, caption_max_words) for c in captions]
    input_ids, attention_mask = tokenizer.encode([prefix + c for c in captions], max_text_len)
    ids = torch.tensor([image_id(str(k)) for k in batch["image_key"]], dtype=torch.long)
    return {"pixel_values": images, "input_ids": input_ids, "attention_mask": attention_mask, "image_ids": ids}
