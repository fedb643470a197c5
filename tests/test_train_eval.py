"""`capfilt evaluate`'s pieces: recall from score matrices, BLEU/CIDEr, and a whole run on a tiny
random checkpoint over a world-like split (image paths relative to the Parquet file)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.train.evaluate import caption_metrics, load_split, recall_at
from pipelines.train.settings import EvaluateSettings


def test_recall_from_hand_made_scores():
    # 2 images, 4 texts: texts 0,1 show image 0; texts 2,3 image 1
    owner = [0, 0, 1, 1]
    i2t = torch.tensor([[0.1, 0.9, 0.2, 0.3],   # image 0: its text 1 first -> TR@1 hit
                        [0.9, 0.1, 0.2, 0.3]])  # image 1: its best text (3) second -> miss at 1
    t2i = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])  # text 1 ranks its image second
    r = recall_at(i2t, t2i, owner)
    assert r["tr@1"] == 0.5 and r["tr@5"] == 1.0
    assert r["ir@1"] == 0.75 and r["ir@5"] == 1.0


@pytest.mark.slow  # METEOR starts its own JVM: ~25 s on a busy 2-core machine
def test_caption_metrics_reward_the_right_caption():
    refs = [["a red square on the left", "a small red square"], ["two blue circles", "blue circles at the top"]]
    good = caption_metrics(refs, ["a red square on the left", "two blue circles"])
    bad = caption_metrics(refs, ["two blue circles", "a red square on the left"])
    for metric in ("bleu4", "meteor", "rouge_l", "cider"):
        assert good[metric] > bad[metric], metric


@pytest.fixture()
def split(tmp_path):
    (tmp_path / "images").mkdir()
    rows = {"image_id": [], "image": [], "caption": []}
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "images" / f"t{i}.png")
        for caption in (f"shape {i} one", f"shape {i} two"):
            rows["image_id"].append(f"t{i}")
            rows["image"].append(f"images/t{i}.png")
            rows["caption"].append(caption)
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table(rows), path)
    return path


def test_load_split_groups_captions_by_image(split):
    s = load_split([str(split)])
    assert s.keys == ["t0", "t1", "t2"] and [len(c) for c in s.captions] == [2, 2, 2]
    assert load_split([str(split)], max_images=2).keys == ["t0", "t1"]


def test_evaluate_a_random_tiny_checkpoint(split, tmp_path):
    from model.random_init import save_random_checkpoint
    from model.tokenizer import train_wordpiece
    from pipelines.train.evaluate import evaluate

    tok = train_wordpiece(["shape 0 one two 1 2 a picture of"] * 4, vocab_size=64)
    save_random_checkpoint(tmp_path / "ckpt", "tiny", tok, seed=0, image_size=32, vision_layers=1, text_layers=1)
    out = tmp_path / "eval.json"
    result = evaluate(EvaluateSettings(checkpoint=tmp_path / "ckpt", data=[str(split)], output=out, k_test=4,
                                       decoding="greedy", max_length=8, min_length=1))
    assert result["images"] == 3 and result["texts"] == 6
    for key in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"):
        assert 0.0 <= result["retrieval"][key] <= 1.0
    assert result["retrieval"]["tr@5"] == 1.0  # 6 candidates: every image has a text in the top 5
    assert set(result["caption"]) >= {"bleu4", "meteor", "rouge_l", "cider"}
    assert json.loads(out.read_text())["sha256"] == result["sha256"]
