"""Images to the MED's input tensor, with the preprocessing a checkpoint's config carries.

The numbers are those of transformers' BlipImageProcessor at the same size (RGB, bicubic resize
of the uint8 image with PIL, scale to [0, 1], CLIP mean/std), so that a BLIP checkpoint sees
what it was trained on, and the interop tests can feed both models the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from model.config import MEDConfig


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (a web logo's transparent background
    reads as white, not as whatever colour PIL's plain convert leaves under it)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_to_array(image: Image.Image, config: MEDConfig) -> np.ndarray:
    """One image -> (3, S, S) float32, normalised. Runs on CPU workers, so numpy, not torch."""
    size = config.image_size
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0  # (S, S, 3)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1).copy()


def images_to_tensor(images: Sequence[Image.Image], config: MEDConfig) -> torch.Tensor:
    """(B, 3, S, S) float32, S = config.image_size."""
    if not images:
        size = config.image_size
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    return torch.from_numpy(np.stack([image_to_array(im, config) for im in images]))
