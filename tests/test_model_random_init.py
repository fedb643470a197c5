"""model/random_init.py: the one maker of a random checkpoint (capfilt model init, a training job
from scratch, tests)."""

import pytest
import torch

from model.checkpoint import checkpoint_hash, load_checkpoint
from model.random_init import save_random_checkpoint
from model.tokenizer import train_wordpiece

SMALL = dict(image_size=32, vision_layers=1, text_layers=1)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(["a picture of a red square on the left", "a blue circle"] * 4, vocab_size=64)


def test_seed_decides_the_weights_and_the_caller_s_random_state_is_untouched(tokenizer, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = save_random_checkpoint(tmp_path / "a", "tiny", tokenizer, seed=7, extra={"roles": ["filter"]}, **SMALL)
    assert torch.equal(torch.rand(3), expected_next)
    b = save_random_checkpoint(tmp_path / "b", "tiny", tokenizer, seed=7, **SMALL)
    c = save_random_checkpoint(tmp_path / "c", "tiny", tokenizer, seed=8, **SMALL)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert checkpoint_hash(b) != checkpoint_hash(c)
    ck = load_checkpoint(a)
    assert ck.med.config.vocab_size == tokenizer.vocab_size and ck.med.config.tokens == tokenizer.ids
    assert ck.med.config.image_size == 32 and ck.extra["roles"] == ["filter"]


def test_an_image_size_the_patches_do_not_tile_is_refused_naming_both(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"image size 30 is not a multiple of the patch size 8"):
        save_random_checkpoint(tmp_path / "x", "tiny", tokenizer, seed=0, image_size=30)
    assert not (tmp_path / "x").exists()
