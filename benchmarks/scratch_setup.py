"""What the from-scratch benchmarks (filter_plateau, position_init) share: a made world, its human
split, and the toy tokenizer `capfilt model init` would train."""

from __future__ import annotations

import os
from pathlib import Path


def world_split_tokenizer(world_dir: Path, human_images: int):
    """(world, human split, tokenizer), with torch using every core."""
    import torch

    from capfilt.commands.model import toy_caption_corpus
    from capfilt.world.store import World
    from model.tokenizer import train_wordpiece
    from pipelines.train.evaluate import load_split

    torch.set_num_threads(os.cpu_count() or 1)
    world = World.load(world_dir)
    split = load_split([str(world.path("human"))], human_images)
    return world, split, train_wordpiece(toy_caption_corpus(), vocab_size=1024)
