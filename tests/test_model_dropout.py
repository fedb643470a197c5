"""BLIP's training-time regularisers: text dropout 0.1 (hidden and attention), ViT drop-path (0.1
for ViT-L), on in train mode only, carried by presets and by imported BLIP checkpoints."""

import pytest
import torch
from transformers import BlipForConditionalGeneration

from model.checkpoint import load_checkpoint
from model.config import MEDConfig, blip_regularisers, preset
from model.dropout import block_rates
from model.med import MED
from model_helpers import blip_config, jitter, pixels, save_transformers, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BLIP_RATES = dict(text_hidden_dropout=0.1, text_attention_dropout=0.1, vision_drop_path=0.1)
OFF = dict(text_hidden_dropout=0.0, text_attention_dropout=0.0, vision_drop_path=0.0)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _text(tok, n=4):
    return tok.encode(["a small red circle on the left"] * n, 12)


def _outputs(med: MED, images, ids, mask) -> list[torch.Tensor]:
    image_embeds = med.encode_image(images)
    return [image_embeds, med.encode_text(ids, mask), med.itm_logits(ids, mask, image_embeds),
            med.lm_logits(ids, mask, image_embeds)]


@pytest.mark.parametrize("rates, differ", [(BLIP_RATES, True), (OFF, False)])
def test_train_mode_passes_differ_only_with_dropout_on(tok, rates, differ):
    torch.manual_seed(0)
    med = MED(small_config(tok, **rates)).train()
    jitter(med)
    images, (ids, mask) = pixels(med.config, batch=4), _text(tok)
    with torch.no_grad():
        first, second = _outputs(med, images, ids, mask), _outputs(med, images, ids, mask)
    assert [not torch.equal(a, b) for a, b in zip(first, second)] == [differ] * 4
    med.eval()  # inference is unaffected
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_outputs(med, images, ids, mask), _outputs(med, images, ids, mask)))


def test_drop_path_alone_moves_the_vit_and_ramps_over_blocks(tok):
    torch.manual_seed(0)
    med = MED(small_config(tok, vision_layers=3, **{**OFF, "vision_drop_path": 0.5})).train()
    images = pixels(med.config, batch=32)
    with torch.no_grad():
        assert not torch.equal(med.encode_image(images), med.encode_image(images))
    assert block_rates(0.1, 3) == pytest.approx([0.0, 0.05, 0.1])
    med.set_regularisers(vision_drop_path=0.0)  # a training flag can switch it off again
    with torch.no_grad():
        assert torch.equal(med.encode_image(images), med.encode_image(images))
    assert med.config.vision_drop_path == 0.0


def test_set_regularisers_reaches_every_dropout_module(tok):
    med = MED(small_config(tok))
    med.set_regularisers(0.2, 0.3, None)
    rates = {name: m.p for name, m in med.named_modules() if isinstance(m, torch.nn.Dropout) and name.startswith("text_")}
    assert rates and all(p == (0.3 if name.endswith("self.dropout") else 0.2) for name, p in rates.items())
    assert (med.config.text_hidden_dropout, med.config.text_attention_dropout) == (0.2, 0.3)


def test_presets_carry_blips_rates_and_tiny_none():
    for name in ("base", "large"):
        c = preset(name)
        assert (c.text_hidden_dropout, c.text_attention_dropout) == (0.1, 0.1)
        assert c.text_config().hidden_dropout_prob == c.text_config().attention_probs_dropout_prob == 0.1
        assert c.vision_config().attention_dropout == 0.0  # BLIP's ViT has no dropout
    assert preset("base").vision_drop_path == 0.0 and preset("large").vision_drop_path == 0.1
    tiny = preset("tiny")
    assert (tiny.text_hidden_dropout, tiny.text_attention_dropout, tiny.vision_drop_path) == (0.0, 0.0, 0.0)
    assert blip_regularisers(24, 1024)["vision_drop_path"] == 0.1 and blip_regularisers(12, 768)["vision_drop_path"] == 0.0


def test_old_checkpoint_config_with_one_dropout_still_loads(tok):
    data = small_config(tok).to_dict()
    for key in OFF:
        data.pop(key)
    data["dropout"] = 0.0
    cfg = MEDConfig.from_dict(data)
    assert (cfg.text_hidden_dropout, cfg.text_attention_dropout, cfg.vision_drop_path) == (0.0, 0.0, 0.0)


def test_imported_blip_checkpoint_carries_blips_dropout(tok, tmp_path):
    cfg = small_config(tok)
    torch.manual_seed(0)
    hf = BlipForConditionalGeneration(blip_config(cfg)).eval()
    assert hf.config.text_config.hidden_dropout_prob == 0.0  # transformers' config says 0; BLIP trained with 0.1
    ck = load_checkpoint(save_transformers(hf, tok, tmp_path / "cap"))
    assert (ck.config.text_hidden_dropout, ck.config.text_attention_dropout) == (0.1, 0.1)
    assert ck.config.vision_drop_path == 0.0  # not a ViT-L
    assert ck.med.text_decoder.bert.encoder.layer[0].attention.self.dropout.p == 0.1
