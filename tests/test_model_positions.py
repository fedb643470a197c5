"""The ViT position embedding's start: sine-cosine gives the grid's geometry, random is BLIP's."""

import pytest
import torch

from model.config import preset
from model.med import MED
from model.positions import init_position_embedding, sincos_2d


def test_sincos_table_is_linear_in_place_and_distinct_per_patch():
    grid, width = 8, 32
    table = sincos_2d(grid, width)
    assert table.shape == (grid * grid, width)
    assert len({tuple(row.tolist()) for row in table}) == grid * grid
    # the lowest column frequency is sin(col) / cos(col): patches of one column share it,
    # and it changes along the row
    col_channel = table[:, 0].view(grid, grid)
    assert torch.allclose(col_channel, col_channel[0:1].expand(grid, grid))
    assert torch.allclose(col_channel[0], torch.sin(torch.arange(grid, dtype=torch.float)), atol=1e-6)
    row_channel = table[:, width // 2].view(grid, grid)
    assert torch.allclose(row_channel, row_channel[:, 0:1].expand(grid, grid))


def test_tiny_preset_starts_from_sincos_and_base_from_random():
    tiny = preset("tiny", vocab_size=64)
    med = MED(tiny)
    pos = med.vision.embeddings.position_embedding[0]
    grid = tiny.image_size // tiny.patch_size
    assert torch.equal(pos[0], torch.zeros_like(pos[0]))
    assert torch.allclose(pos[1:], sincos_2d(grid, tiny.vision_width))
    random = MED(tiny.replace(position_init="random")).vision.embeddings.position_embedding[0]
    assert not torch.allclose(random[1:], sincos_2d(grid, tiny.vision_width))
    assert preset("base").position_init == "random"


def test_unknown_start_and_odd_shapes_are_refused():
    with pytest.raises(ValueError, match="position_init"):
        init_position_embedding(torch.zeros(1, 5, 8), "learned")
    with pytest.raises(ValueError, match="square grid"):
        init_position_embedding(torch.zeros(1, 6, 8), "sincos")
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 6)
