"""A new checkpoint with random weights: the one way `capfilt model init`, a training job started
from scratch and the tests make one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.checkpoint import save_checkpoint
from model.config import preset
from model.med import MED
from model.tokenizer import TextTokenizer


def save_random_checkpoint(directory: str | Path, preset_name: str, tokenizer: TextTokenizer, *, seed: int,
                           extra: dict[str, Any] | None = None, **changes: Any) -> Path:
    """A MED of `preset_name` (with `changes` to its config) sized to `tokenizer`'s vocabulary and
    special ids, its weights drawn from `seed`, written as a checkpoint at `directory`.

    The draw has a generator of its own: the same seed gives the same weights whatever the
    caller's random state, and the caller's random state is left as it was."""
    config = preset(preset_name, vocab_size=tokenizer.vocab_size, tokens=tokenizer.ids, **changes)
    if config.image_size % config.patch_size:
        raise ValueError(f"image size {config.image_size} is not a multiple of the patch size {config.patch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        med = MED(config)
    return save_checkpoint(directory, med, tokenizer, extra=extra)
