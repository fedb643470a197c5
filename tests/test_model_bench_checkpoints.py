"""The benchmark's random-weight BLIP folders (benchmarks/random_blip.py) are what both sides of
bootstrap_vs_transformers need: capfilt loads them as captioner and filter, transformers'
AutoTokenizer and image processor read the same ids and sizes; and the summary's arithmetic."""

import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from benchmarks.bootstrap_vs_transformers import steady_rate
from benchmarks.random_blip import bert_layout_tokenizer, make_blip_checkpoints
from model.checkpoint import load_checkpoint
from model.config import preset


@pytest.mark.slow
def test_bert_layout_ids():
    tok = bert_layout_tokenizer()
    assert tok.vocab_size == 30524
    assert (tok.ids.pad, tok.ids.cls, tok.ids.sep, tok.ids.dec, tok.ids.enc) == (0, 101, 102, 30522, 30523)
    assert tok.encode_prompt("a picture of ")[0] == 101 and len(tok.encode_prompt("a picture of ")) == 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_blip_checkpoints(tmp_path_factory.mktemp("bench") / "ckpt", "tiny", image_size=64)


@pytest.mark.slow
def test_capfilt_and_transformers_read_the_same_folders(folders):
    cap, filt = load_checkpoint(folders["captioner"]), load_checkpoint(folders["filter"])
    assert (cap.kind, filt.kind) == ("blip-caption", "blip-itm")
    assert cap.config.image_size == filt.config.image_size == 64
    hf_tok = AutoTokenizer.from_pretrained(folders["captioner"])
    text = "a red circle on the left"
    assert hf_tok(text).input_ids == cap.tokenizer.encode([text], 35)[0][0].tolist()
    processor = BlipImageProcessorPil.from_pretrained(folders["captioner"])
    assert processor.size == {"height": 64, "width": 64}
    # the ViT's init is the preset's range, not BlipVisionConfig's 1e-10 (denormal activations)
    assert cap.med.vision.encoder.layers[0].mlp.fc1.weight.std().item() == pytest.approx(preset("tiny").init_range, rel=0.2)
    assert torch.isfinite(cap.med.encode_image(torch.randn(1, 3, 64, 64))).all()


def test_steady_rate_fits_the_middle_of_the_run():
    # 2 rows/s after a 10 s start and a slow tail: only 10-90 % of the rows count
    progress = [(10.0 + t / 2.0, t) for t in range(0, 91, 10)] + [(100.0, 100)]
    assert steady_rate(progress, 100) == pytest.approx(2.0)
    assert steady_rate([(5.0, 100)], 100) is None


def test_plain_loop_time_at_a_prefix():
    from benchmarks.bootstrap_vs_transformers import _plain_from_prefix

    big = {"wall_seconds": 110.0, "seconds_at_image": [10.0 + i for i in range(1, 101)], "load_seconds": 2.0,
           "load_average_before": 1.0, "torch_threads": 2}
    runs = {"100": [{"plain": big}], "8": [{"capfilt": {}}, {"capfilt": {}}]}
    _plain_from_prefix(runs, 100)
    # 110 s in all, image 100 done at 110 s from main(), image 8 at 18 s: 92 s of it came after image 8
    assert [e["plain"]["wall_seconds"] for e in runs["8"]] == [18.0, 18.0]
    assert runs["8"][0]["plain"]["derived_from_images"] == 100
