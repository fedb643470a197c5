"""images_to_tensor gives transformers' BlipImageProcessor numbers at the config's size."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from model.config import preset
from model.preprocess import images_to_tensor


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 41, 4), dtype=np.uint8)
    rgba[..., 3] = rng.choice([0, 128, 255], size=(30, 41))  # transparent, half, opaque
    palette = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    return [
        Image.fromarray(rng.integers(0, 256, (500, 375, 3), dtype=np.uint8)),  # downscale
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),  # upscale
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)),  # grey, no resize
        Image.fromarray(rgba, "RGBA"),
        palette,
    ]


@pytest.mark.parametrize("size", [64, 224, 384])
def test_matches_blip_image_processor(size):
    config = preset("tiny", image_size=size)
    ours = images_to_tensor(_images(), config)
    theirs = BlipImageProcessorPil(size={"height": size, "width": size})(_images(), return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (5, 3, size, size) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_transparency_is_white_and_empty_batch():
    config = preset("tiny")
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    white = Image.new("RGB", (10, 10), (255, 255, 255))
    assert torch.equal(images_to_tensor([clear], config), images_to_tensor([white], config))
    assert images_to_tensor([], config).shape == (0, 3, 64, 64)
