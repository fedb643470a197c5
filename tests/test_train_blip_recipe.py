"""BLIP's recipe knobs of the training and evaluation jobs, without Ray: pre_caption on training
captions, positives and dropout per task, top-k in evaluation's nucleus captions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import preset
from model.med import MED
from model.tokenizer import train_wordpiece
from pipelines.train.augment import collate
from pipelines.train.pairs import decode_image
from pipelines.train.settings import EvaluateSettings, TrainSettings
from pipelines.train.step import build_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(["a picture of a red square on the left", "a blue circle", "click to enlarge"] * 5, vocab_size=64)


@pytest.fixture()
def med(tok):
    torch.manual_seed(0)
    return MED(preset("tiny", image_size=16, vocab_size=tok.vocab_size, tokens=tok.ids, vision_layers=1, text_layers=1))


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_training_captions_are_cleaned_as_blips_pre_caption(tok, med):
    def ids(captions, words):
        batch = {"image": np.stack([decode_image(_jpeg(), 16)] * len(captions)), "caption": _objects(captions),
                 "image_key": _objects(["k"] * len(captions))}
        return collate(batch, config=med.config, tokenizer=tok, max_text_len=40, generator=None, crop_scale_min=1.0,
                       prefix="a picture of ", caption_max_words=words)["input_ids"]

    raw = ["A Red Square (on the LEFT)!", " ".join(["blue"] * 35)]
    clean = ["a red square on the left", " ".join(["blue"] * 30)]
    assert torch.equal(ids(raw, 30), ids(clean, None))
    assert not torch.equal(ids(raw, None), ids(clean, None))
    settings = TrainSettings(data=["x"], output="out")
    assert (settings.pre_caption, settings.caption_max_words) == (True, 30)


@pytest.mark.parametrize("task, flag, want", [
    ("pretrain", "auto", "pair"), ("filter", "auto", "image"), ("pretrain", "image", "image"), ("filter", "pair", "pair"),
])
def test_positives_per_task(tmp_path, tok, med, task, flag, want):
    settings = TrainSettings(task=task, data=["x"], output=tmp_path, init=tmp_path, positives=flag)
    assert build_task(settings, med, tok).positives == want


def test_dropout_flags_replace_the_checkpoints_rates(tmp_path, tok, med):
    assert med.config.text_hidden_dropout == 0.0  # tiny
    build_task(TrainSettings(data=["x"], output=tmp_path, init=tmp_path), med, tok)
    assert med.config.text_hidden_dropout == 0.0  # no flag: the checkpoint's rates
    task = build_task(TrainSettings(data=["x"], output=tmp_path, init=tmp_path, text_dropout=0.1, vision_drop_path=0.1),
                      med, tok)
    assert (med.config.text_hidden_dropout, med.config.text_attention_dropout, med.config.vision_drop_path) == (0.1, 0.1, 0.1)
    assert med.text_encoder.encoder.layer[0].attention.self.dropout.p == 0.1
    assert task.momentum.text_encoder.encoder.layer[0].attention.self.dropout.p == 0.1  # copied after the change


def test_evaluation_nucleus_uses_top_k(tmp_path, tok, med):
    from pipelines.train.evaluate import generate

    assert EvaluateSettings(checkpoint=tmp_path, data=["x"]).top_k == 50
    pixels = torch.randn(1, 3, 16, 16)

    def spread(top_k: int) -> int:
        s = EvaluateSettings(checkpoint=tmp_path, data=["x"], decoding="nucleus", top_k=top_k, min_length=0, max_length=12)
        return len({generate(med, tok, pixels, s, [seed])[0] for seed in range(6)})

    assert spread(1) == 1
    assert spread(0) > 1
