"""`capfilt model init` / `capfilt model info`, through the CLI's main()."""

import json

import pytest
import torch

from capfilt.cli import main
from capfilt.commands.model import toy_caption_corpus
from model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "tiny"
    assert main(["model", "init", "--preset", "tiny", "--output", str(out), "--seed", "3"]) == 0
    return out


def test_init_writes_a_checkpoint_that_is_captioner_and_filter(tiny_dir):
    ck = load_checkpoint(tiny_dir)
    assert ck.kind == "capfilt" and ck.roles == ("captioner", "filter") and ck.med.tied
    assert ck.config.preset == "tiny" and ck.config.vocab_size == ck.tokenizer.vocab_size
    assert ck.tokenizer.ids == ck.config.tokens
    assert ck.extra["seed"] == 3
    ids, mask = ck.tokenizer.encode(["a small red circle on the left"], 32)
    with torch.no_grad():
        img = ck.med.encode_image(torch.randn(1, 3, 64, 64))
        assert ck.med.lm_logits(ids, mask, img).shape[-1] == ck.config.vocab_size
        assert ck.med.itm_logits(ids, mask, img).shape == (1, 2)


def test_toy_tokenizer_spells_every_grammar_word_without_unk(tiny_dir):
    tok = load_checkpoint(tiny_dir).tokenizer
    unk = tok.tokenizer.token_to_id("[UNK]")
    for line in toy_caption_corpus() + ["IMG_0042.JPG", "Screenshot_77.webp"]:
        ids, _ = tok.encode([line], 128)
        assert unk not in ids[0].tolist(), line
    # grammar words are whole tokens, not pieces
    words = {w for line in toy_caption_corpus()[:-2] for w in line.split()}
    for word in words:
        assert tok.encode([word], 8)[0].shape[1] == 3, word


def test_info_prints_preset_counts_and_hash(tiny_dir, capsys):
    assert main(["model", "info", str(tiny_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ck = load_checkpoint(tiny_dir)
    assert info["preset"] == "tiny" and info["sha256"] == ck.sha256
    p = info["parameters"]
    assert p["total"] > p["captioner"] > 0 and p["filter"] > 0
    assert main(["model", "info", str(tiny_dir)]) == 0
    text = capsys.readouterr().out
    assert "tiny" in text and ck.sha256 in text and f"{p['captioner']:,}" in text


def test_same_seed_same_hash_other_seed_other_hash(tiny_dir, tmp_path, capsys):
    assert main(["model", "init", "--output", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["model", "init", "--output", str(tmp_path / "b"), "--seed", "4"]) == 0
    capsys.readouterr()
    hashes = []
    for d in (tiny_dir, tmp_path / "a", tmp_path / "b"):
        assert main(["model", "info", str(d), "--json"]) == 0
        hashes.append(json.loads(capsys.readouterr().out)["sha256"])
    assert hashes[0] == hashes[1] != hashes[2]


def test_image_size_flag(tmp_path):
    assert main(["model", "init", "--output", str(tmp_path / "c"), "--image-size", "96"]) == 0
    assert load_checkpoint(tmp_path / "c").config.image_size == 96


def test_refusals(tiny_dir, tmp_path, capsys):
    assert main(["model", "init", "--output", str(tiny_dir)]) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["model", "init", "--output", str(tmp_path / "x"), "--preset", "huge"]) == 2
    assert main(["model", "init", "--output", str(tmp_path / "x"), "--seed", "-1"]) == 2
    assert main(["model", "init", "--output", str(tmp_path / "x"), "--image-size", "70"]) == 1
    assert "patch size" in capsys.readouterr().err
    assert main(["model", "info", str(tmp_path / "nothing")]) == 1
    assert "not a checkpoint" in capsys.readouterr().err


def test_export_writes_folders_transformers_loads_with_the_same_scores(tiny_dir, tmp_path):
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    cap, fil = tmp_path / "captioner", tmp_path / "filter"
    assert main(["model", "export", str(tiny_dir), "--captioner", str(cap), "--filter", str(fil)]) == 0
    ck = load_checkpoint(tiny_dir)
    ids, mask = ck.tokenizer.encode(["a small red circle on the left"], 32)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        img = ck.med.encode_image(pixels)
        ours_lm = ck.med.lm_logits(ids, mask, img)
        ours_itm = ck.med.itm_logits(ids, mask, img)
        hf_cap = BlipForConditionalGeneration.from_pretrained(cap).eval()
        dec_ids = ids.clone()
        dec_ids[:, 0] = ck.config.tokens.dec
        theirs_lm = hf_cap(pixel_values=pixels, input_ids=dec_ids, attention_mask=mask).logits
        hf_fil = BlipForImageTextRetrieval.from_pretrained(fil).eval()
        enc_ids = ids.clone()
        enc_ids[:, 0] = ck.config.tokens.enc  # the MED scores ITM with [ENC] first
        theirs_itm = hf_fil(pixel_values=pixels, input_ids=enc_ids, attention_mask=mask).itm_score
    assert (ours_lm - theirs_lm).abs().max() <= 1e-5
    assert (ours_itm - theirs_itm).abs().max() <= 1e-5


def test_export_without_a_target_is_refused(tiny_dir, capsys):
    assert main(["model", "export", str(tiny_dir)]) == 1
    assert "nothing to export" in capsys.readouterr().err


def test_position_init_defaults_to_the_preset_and_can_be_chosen(tiny_dir, tmp_path, capsys):
    from model.positions import sincos_2d

    def patch_positions(path):
        ck = load_checkpoint(path)
        return ck.config, ck.med.vision.embeddings.position_embedding[0, 1:].detach()

    config, positions = patch_positions(tiny_dir)
    table = sincos_2d(config.image_size // config.patch_size, config.vision_width)
    assert config.position_init == "sincos" and torch.allclose(positions, table)
    assert main(["model", "init", "--output", str(tmp_path / "r"), "--position-init", "random"]) == 0
    config, positions = patch_positions(tmp_path / "r")
    assert config.position_init == "random" and not torch.allclose(positions, table)
    capsys.readouterr()
    assert main(["model", "init", "--output", str(tmp_path / "x"), "--position-init", "learned"]) == 2
    assert "position_init" in capsys.readouterr().err
