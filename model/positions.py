"""Starting values for the ViT's learned position embedding.

BLIP's ViT learns its position embedding from a small random start, and a pre-trained ViT
arrives with it learned. A model trained from scratch on little data must first discover, from
64 unrelated random vectors, which patches lie left of which. Starting from a 2-D sine-cosine
table (as MAE's fixed one) gives it the grid's geometry at step 0: "left" is then a linear
function of the embedding. The parameter stays learned and its shape and name are BLIP's, so a
checkpoint is the same whatever start it had.
"""

from __future__ import annotations

import math

import torch

POSITION_INITS = ("random", "sincos")


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(grid * grid, width): half the channels encode the column, half the row, each as sines and
    cosines of geometric frequencies. Rows of the table follow the ViT's patch order (row-major)."""
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine table needs a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / (10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def encode(coordinate: torch.Tensor) -> torch.Tensor:
        angles = coordinate.flatten()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


@torch.no_grad()
def init_position_embedding(position_embedding: torch.Tensor, kind: str) -> None:
    """Overwrite a fresh (1, 1 + N, D) ViT position embedding in place; "random" leaves it."""
    if kind not in POSITION_INITS:
        raise ValueError(f"position_init must be one of {POSITION_INITS}, got {kind!r}")
    if kind == "random":
        return
    patches, width = position_embedding.shape[1] - 1, position_embedding.shape[2]
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ValueError(f"the position embedding has {patches} patch positions, not a square grid")
    position_embedding[0, 0].zero_()  # the [CLS] token has no place
    position_embedding[0, 1:] = sincos_2d(grid, width).to(position_embedding.dtype)
