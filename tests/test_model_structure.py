"""The MED's structure: sharing by identity, and parameter counts equal to transformers' BLIP."""

import pytest
import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

from model.config import PRESETS, preset
from model.med import MED, count_parameters


def test_decoder_shares_modules_with_encoder_except_self_attention():
    med = MED(preset("tiny"))
    enc, dec = med.text_encoder, med.text_decoder.bert
    assert dec.embeddings is enc.embeddings
    assert dec.embeddings.word_embeddings.weight is enc.embeddings.word_embeddings.weight
    assert med.text_decoder.cls.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    for e, d in zip(enc.encoder.layer, dec.encoder.layer):
        assert d.crossattention is e.crossattention
        assert d.intermediate is e.intermediate and d.output is e.output
        assert d.crossattention.self.query.weight is e.crossattention.self.query.weight
        assert d.output.dense.weight is e.output.dense.weight
        # self-attention is the decoder's own (causal vs bidirectional)
        assert d.attention is not e.attention
        assert d.attention.self.query.weight is not e.attention.self.query.weight


def test_untied_med_shares_nothing_between_towers():
    med = MED(preset("tiny"), tie=False)
    enc_ids = {id(p) for p in med.text_encoder.parameters()}
    assert not enc_ids & {id(p) for p in med.text_decoder.parameters()}


def _vit_large() -> dict:
    return dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=16)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


@pytest.mark.parametrize("name", ["base", "large"])
@pytest.mark.parametrize("image_size", [224, 384])
def test_parameter_counts_match_transformers_blip(name, image_size):
    vision = dict(image_size=image_size, **(_vit_large() if name == "large" else {}))
    with torch.device("meta"):
        blip = BlipConfig(vision_config=vision)
        captioner = BlipForConditionalGeneration(blip)
        retrieval = BlipForImageTextRetrieval(blip)
        med = MED(preset(name, image_size=image_size))
    assert count_parameters(med.captioner_modules()) == _count(captioner)
    assert count_parameters(med.filter_modules()) == _count(retrieval)
    if name == "base" and image_size == 384:
        assert _count(captioner) == 223_971_644  # BlipConfig()'s own default


def test_every_preset_builds_and_runs_its_three_modes():
    cfg = PRESETS["tiny"]
    med = MED(cfg).eval()
    ids = torch.tensor([[cfg.tokens.cls, 10, 11, cfg.tokens.sep]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        img = med.encode_image(torch.randn(1, 3, cfg.image_size, cfg.image_size))
        assert med.image_feature(img).shape == (1, cfg.embed_dim)
        assert med.text_feature(med.encode_text(ids, mask)).shape == (1, cfg.embed_dim)
        assert med.itm_logits(ids, mask, img).shape == (1, 2)
        assert med.lm_logits(ids, mask, img).shape == (1, 4, cfg.vocab_size)
