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


def _storages_apart(module: torch.nn.Module) -> bool:
    """No two distinct tensors of the module share memory (a tensor reached under two names, a tie,
    is one tensor)."""
    seen: dict[int, int] = {}
    for tensor in {id(t): t for t in module.state_dict(keep_vars=True).values()}.values():
        if tensor.numel():
            ptr = tensor.untyped_storage().data_ptr()
            if seen.setdefault(ptr, id(tensor)) != id(tensor):
                return False
    return True


@pytest.mark.parametrize("kind", ["capfilt", "transformers captioner", "transformers filter"])
def test_a_load_that_adopts_the_tensors_read_gives_the_same_model(med, tok, tmp_path, kind):
    from model.hf_interop import export_captioner, export_filter

    path = {"capfilt": lambda: save_checkpoint(tmp_path / "c", med, tok),
            "transformers captioner": lambda: export_captioner(med, tok, tmp_path / "c"),
            "transformers filter": lambda: export_filter(med, tok, tmp_path / "c")}[kind]()
    copied, adopted = load_checkpoint(path), load_checkpoint(path, adopt=True)
    a, b = copied.med.state_dict(), adopted.med.state_dict()
    assert copied.left_at_init == adopted.left_at_init  # a captioner's ITM head: drawn afresh by each load
    read = [k for k in a if k not in copied.left_at_init]
    assert a.keys() == b.keys() and len(read) > len(a) // 2 and all(torch.equal(a[k], b[k]) for k in read)
    assert _storages_apart(adopted.med)  # the towers a transformers folder shares are copies apart
    with torch.no_grad():
        images = pixels(med.config, batch=2, seed=3)
        assert torch.equal(copied.med.encode_image(images), adopted.med.encode_image(images))


@pytest.mark.parametrize("kind", ["capfilt", "transformers captioner", "transformers filter", "BLIP .pth"])
def test_the_image_size_read_off_the_config_is_the_loaded_models(med, tok, tmp_path, kind):
    from model.checkpoint_files import image_size_on_disk
    from model.hf_interop import export_captioner, export_filter

    if kind == "BLIP .pth":  # carries no config: its size is its position embedding's, so not read off disk
        (tmp_path / "c").mkdir()
        torch.save({}, tmp_path / "c" / "model_base.pth")
        assert image_size_on_disk(tmp_path / "c") is None
        return
    save = {"capfilt": lambda m, path: save_checkpoint(path, m, tok),
            "transformers captioner": lambda m, path: export_captioner(m, tok, path),
            "transformers filter": lambda m, path: export_filter(m, tok, path)}[kind]
    for size in (med.config.image_size, med.config.image_size * 2):
        resized = load_checkpoint(save_checkpoint(tmp_path / f"s{size}", med, tok), image_size=size).med
        path = save(resized, tmp_path / f"c{size}")
        assert image_size_on_disk(path) == load_checkpoint(path).config.image_size == size


def test_assign_adopts_a_tensor_once_and_copies_a_storage_already_adopted():
    from model.weights_io import assign_state

    module = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)})
    flat = torch.randn(2, 4, 4)  # two weights that are views of one storage, as in some .pth files
    own = {name: torch.randn(4) for name in ("a.bias", "b.bias")}
    state = {"a.weight": flat[0], "b.weight": flat[1], **own}
    assign_state(module, state, "test", adopt=True)
    assert module["a"].bias.data_ptr() == own["a.bias"].data_ptr()  # adopted: no copy
    assert module["b"].bias.data_ptr() == own["b.bias"].data_ptr()
    for name in ("a", "b"):  # a view of a larger storage is copied, so the weights stay apart
        assert module[name].weight.data_ptr() != flat.data_ptr() and torch.equal(module[name].weight, state[f"{name}.weight"])
    assert module["a"].weight.untyped_storage().data_ptr() != module["b"].weight.untyped_storage().data_ptr()
    shared = torch.randn(4)
    assign_state(module, {**state, "a.bias": shared, "b.bias": shared}, "test", adopt=True)
    assert module["a"].bias.data_ptr() == shared.data_ptr() != module["b"].bias.data_ptr()  # one tensor, adopted once
    assert torch.equal(module["b"].bias, shared)
    copied = torch.nn.Linear(4, 4)
    source = torch.randn(4)
    assign_state(copied, {"weight": torch.randn(4, 4), "bias": source}, "test")
    assert copied.bias.data_ptr() != source.data_ptr()  # the default copies


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
