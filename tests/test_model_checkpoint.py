"""capfilt checkpoint directories: round trip, strictness, truncation, hashing."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import checkpoint_hash, load_checkpoint, save_checkpoint
from model.med import MED
from model.weights_io import CheckpointError
from model_helpers import jitter, pixels, small_config, tiny_tokenizer

TEXTS = ["a small red circle", "a big blue star near the top"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def med(tok):
    torch.manual_seed(0)
    model = MED(small_config(tok)).eval()
    jitter(model)
    return model


@torch.no_grad()
def _outputs(med: MED, tok) -> list[torch.Tensor]:
    x = pixels(med.config)
    ids, mask = tok.encode(TEXTS, 20)
    img = med.encode_image(x)
    return [img, med.lm_logits(ids, mask, img), med.itm_logits(ids, mask, img),
            med.text_feature(med.encode_text(ids, mask))]


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_identical_outputs(tok, tmp_path, tie):
    torch.manual_seed(1)
    med = MED(small_config(tok), tie=tie).eval()
    jitter(med)
    save_checkpoint(tmp_path / "ck", med, tok, extra={"step": 7})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.kind == "capfilt" and ck.med.tied == tie and ck.extra == {"step": 7}
    assert ck.config == med.config and ck.tokenizer.ids == tok.ids
    for a, b in zip(_outputs(med, tok), _outputs(ck.med, tok)):
        assert torch.equal(a, b)
    if tie:  # sharing survives the trip
        assert ck.med.text_decoder.bert.encoder.layer[0].output is ck.med.text_encoder.encoder.layer[0].output


def test_shared_tensors_are_saved_once(med, tok, tmp_path):
    save_checkpoint(tmp_path / "ck", med, tok)
    keys = set(load_file(tmp_path / "ck" / "model.safetensors"))
    assert "text_encoder.encoder.layer.0.crossattention.self.query.weight" in keys
    assert "text_decoder.bert.encoder.layer.0.crossattention.self.query.weight" not in keys
    assert "text_decoder.bert.encoder.layer.0.attention.self.query.weight" in keys  # own self-attention
    header = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert header["format"] == "capfilt-med" and header["format_version"] == 1 and header["tied"] is True


def test_hash_is_stable_and_tracks_the_weights(med, tok, tmp_path):
    save_checkpoint(tmp_path / "a", med, tok, extra={"note": "one"})
    save_checkpoint(tmp_path / "b", med, tok, extra={"note": "two"})  # extra.json is not hashed
    h = checkpoint_hash(tmp_path / "a")
    assert len(h) == 64 and h == checkpoint_hash(tmp_path / "a") == checkpoint_hash(tmp_path / "b")
    assert load_checkpoint(tmp_path / "a").sha256 == h
    with torch.no_grad():
        med.itm_head.bias.add_(1.0)
    try:
        save_checkpoint(tmp_path / "c", med, tok)
    finally:
        with torch.no_grad():
            med.itm_head.bias.sub_(1.0)
    assert checkpoint_hash(tmp_path / "c") != h


def test_a_load_without_the_hash_gives_the_same_model_and_no_sha(med, tok, tmp_path):
    save_checkpoint(tmp_path / "a", med, tok)
    hashed, unhashed = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "a", hashed=False)
    assert hashed.sha256 == checkpoint_hash(tmp_path / "a") and unhashed.sha256 is None
    a, b = hashed.med.state_dict(), unhashed.med.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_replaces_an_old_checkpoint_and_leaves_no_temp_folders(med, tok, tmp_path):
    save_checkpoint(tmp_path / "ck", med, tok, extra={"v": 1})
    save_checkpoint(tmp_path / "ck", med, tok, extra={"v": 2})
    assert json.loads((tmp_path / "ck" / "extra.json").read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_truncated_safetensors_names_file_and_tensor(med, tok, tmp_path):
    ck = save_checkpoint(tmp_path / "ck", med, tok)
    weights = ck / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated.*tensor '[\w.]+'"):
        load_checkpoint(ck)
    weights.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint(ck)


def test_mismatched_shape_names_file_and_tensor(med, tok, tmp_path):
    ck = save_checkpoint(tmp_path / "ck", med, tok)
    state = load_file(ck / "model.safetensors")
    state["itm_head.weight"] = torch.zeros(3, med.config.text_width)
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*'itm_head\.weight' has shape \(3, 64\).*\(2, 64\)"):
        load_checkpoint(ck)


def test_missing_and_unexpected_keys_are_all_listed(med, tok, tmp_path):
    ck = save_checkpoint(tmp_path / "ck", med, tok)
    state = load_file(ck / "model.safetensors")
    del state["text_proj.weight"], state["vision.post_layernorm.bias"]
    state["momentum.extra"] = torch.zeros(1)
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ck)
    msg = str(err.value)
    assert "missing keys (2)" in msg and "text_proj.weight" in msg and "vision.post_layernorm.bias" in msg
    assert "unexpected keys (1): momentum.extra" in msg


def test_image_size_change_on_load(med, tok, tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck", med, tok), image_size=48)
    assert ck.config.image_size == 48
    with torch.no_grad():
        assert ck.med.encode_image(torch.randn(1, 3, 48, 48)).shape[1] == 1 + 36
    with pytest.raises(CheckpointError, match="multiple of the patch size"):
        load_checkpoint(tmp_path / "ck", image_size=50)


def test_tokenizer_must_match_the_model(med, tok, tmp_path):
    other = small_config(tok, vocab_size=tok.vocab_size + 5)
    with pytest.raises(ValueError, match="tokens"):
        save_checkpoint(tmp_path / "ck", MED(other), tok)
