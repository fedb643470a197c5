"""Hub names, released presets and `.pth` files wherever a checkpoint is taken: resolved offline
from a huggingface_hub cache that the tests write themselves (tiny random transformers BLIP
models, save_pretrained into the cache's own layout), with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from capfilt.cli import main as capfilt_main
from model.checkpoint import checkpoint_hash, load_checkpoint
from model.hub import resolve_checkpoint
from model.med import MED
from model.released import RELEASED
from model.weights_io import CheckpointError
from model_helpers import (blip_config, jitter, save_transformers, small_config, tiny_tokenizer,
                           to_blip_pth_layout, write_hub_snapshot)

CAP_SHA = "1" * 40
ITM_SHA = "2" * 40
OLD_SHA = "3" * 40


def _config(tok):
    # heads = width / 64, as BLIP's, so a .pth (which carries no config) reads back the same shape
    return small_config(tok, vision_heads=1, text_heads=1, vision_layer_norm_eps=1e-6)


def make_hub_cache(cache: Path) -> dict[str, Path]:
    """org/cap (a captioner, two commits: main and an older one), org/itm (a filter), and the
    repos of the released presets blip-large and blip-itm-large (tiny random stand-ins)."""
    tok = tiny_tokenizer()
    cfg = _config(tok)

    def captioner(seed):
        def fill(folder):
            torch.manual_seed(seed)
            model = BlipForConditionalGeneration(blip_config(cfg)).eval()
            jitter(model, seed)
            save_transformers(model, tok, folder)
        return fill

    def itm(folder):
        torch.manual_seed(2)
        model = BlipForImageTextRetrieval(blip_config(cfg)).eval()
        jitter(model, 2)
        save_transformers(model, tok, folder)

    paths = {"org/cap": write_hub_snapshot(cache, "org/cap", captioner(1), CAP_SHA)}
    # an older commit of org/cap, beside main: only a pin reaches it
    captioner(3)(_mkdir(cache / "models--org--cap" / "snapshots" / OLD_SHA))
    paths["org/itm"] = write_hub_snapshot(cache, "org/itm", itm, ITM_SHA)
    # the repos of the presets `--captioner blip-large --filter blip-itm-large` name
    paths["blip-large"] = write_hub_snapshot(cache, RELEASED["blip-large"].source, captioner(4), "4" * 40)
    paths["blip-itm-large"] = write_hub_snapshot(cache, RELEASED["blip-itm-large"].source, itm, "5" * 40)
    return paths


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_pth_files(root: Path) -> dict[str, Path]:
    """A BLIP caption .pth and a retrieval .pth, each with BLIP's tokenizer files beside it."""
    tok = tiny_tokenizer()
    cfg = _config(tok)
    torch.manual_seed(5)
    med = MED(cfg, tie=False).eval()
    jitter(med, 5)
    full = to_blip_pth_layout(med.state_dict())
    out = {}
    for role, name, keep in (("captioner", "model_base_caption_capfilt_large.pth",
                              lambda k: k.startswith(("visual_encoder.", "text_decoder."))),
                             ("filter", "model_base_retrieval_coco.pth", lambda k: not k.startswith("text_decoder."))):
        folder = _mkdir(root / role)
        tok.save(folder)
        torch.save({"model": {k: v for k, v in full.items() if keep(k)}}, folder / name)
        out[role] = folder / name
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    paths = make_hub_cache(cache)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield {"cache": cache, **paths}
    mp.undo()


def test_hub_name_resolves_to_its_main_commit_and_a_pin_to_another(hub):
    main = resolve_checkpoint("org/cap")
    assert main.path == hub["org/cap"] and main.revision == CAP_SHA and main.pinned == f"org/cap@{CAP_SHA}"
    old = resolve_checkpoint(f"org/cap@{OLD_SHA}")
    assert old.path.name == OLD_SHA and old.pinned == f"org/cap@{OLD_SHA}"
    a, b = load_checkpoint("org/cap"), load_checkpoint(f"org/cap@{OLD_SHA}")
    assert a.kind == "blip-caption" and a.roles == ("captioner",)
    assert a.sha256 == checkpoint_hash(hub["org/cap"]) != b.sha256
    assert a.source.record()["revision"] == CAP_SHA
    filt = load_checkpoint("org/itm")
    assert filt.kind == "blip-itm" and filt.roles == ("filter",)


def test_released_preset_resolves_through_the_hub_cache(hub):
    ck = load_checkpoint("blip-large")
    assert ck.source.preset == "blip-large" and ck.source.repo_id == "Salesforce/blip-image-captioning-large"
    assert ck.source.pinned == "Salesforce/blip-image-captioning-large@" + "4" * 40


def test_unknown_names_give_an_error_naming_them(hub):
    with pytest.raises(CheckpointError, match=r"'org/nothing'.*not in the hub cache.*HF_HUB_OFFLINE"):
        load_checkpoint("org/nothing")
    with pytest.raises(CheckpointError, match=r"'org/cap@v9'.*not in the hub cache"):
        resolve_checkpoint("org/cap@v9")
    with pytest.raises(CheckpointError, match=r"no such thing: not a checkpoint directory or \.pth file \(no such path\), not a released preset.*blip-large"):
        resolve_checkpoint("no such thing")
    # a preset whose repo is not cached names the repo it looked for
    with pytest.raises(CheckpointError, match="Salesforce/blip-itm-large-flickr"):
        resolve_checkpoint("blip-itm-large-flickr")


def test_pth_preset_is_read_from_the_torch_hub_folder_offline(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError, match=r"blip-pth-caption-base.*missing.*HF_HUB_OFFLINE.*model_base_caption_capfilt_large\.pth"):
        resolve_checkpoint("blip-pth-caption-base")
    files = make_pth_files(tmp_path / "made")
    folder = _mkdir(tmp_path / "torch" / "hub" / "capfilt" / "blip-pth-caption-base")
    (folder / "model_base_caption_capfilt_large.pth").write_bytes(files["captioner"].read_bytes())
    # the tokenizer comes from the hub repo named in the table, here not cached: a clear error
    with pytest.raises(CheckpointError, match="its tokenizer.*Salesforce/blip-image-captioning-base"):
        resolve_checkpoint("blip-pth-caption-base")
    tiny_tokenizer().save(folder)
    ck = load_checkpoint("blip-pth-caption-base")
    assert ck.kind == "blip-pth" and ck.roles == ("captioner",) and ck.source.url.endswith("capfilt_large.pth")


def test_pth_file_hash_covers_that_file_and_its_tokenizer_only(tmp_path):
    files = make_pth_files(tmp_path)
    folder = files["captioner"].parent
    before = checkpoint_hash(files["captioner"])
    torch.save({"model": {}}, folder / "another.pth")  # another weight file beside it: not this checkpoint
    assert checkpoint_hash(files["captioner"]) == before
    (folder / "vocab.txt").write_text((folder / "vocab.txt").read_text() + "zzz\n")
    assert checkpoint_hash(files["captioner"]) != before


def test_model_info_takes_a_hub_name(hub, capsys):
    assert capfilt_main(["model", "info", "org/itm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "blip-itm" and info["source"]["pinned"] == f"org/itm@{ITM_SHA}"
    assert capfilt_main(["model", "info", "org/missing"]) == 1
    assert "org/missing" in capsys.readouterr().err


def test_model_list_prints_every_preset(capsys):
    assert capfilt_main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name, weights in RELEASED.items():
        assert name in out and weights.source in out
    assert "384" in out and "224" in out and "bicubic" in out
    assert capfilt_main(["model", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in listed} == set(RELEASED)


def test_train_init_takes_a_hub_name_and_refuses_nonsense(hub):
    from pipelines.train.settings import TrainSettings

    s = TrainSettings(data=["x"], output=Path("out"), task="caption", init=Path("org/cap"))
    assert str(s.init) == "org/cap"
    with pytest.raises(ValueError, match="init: checkpoint folder not found, nor a .pth"):
        TrainSettings(data=["x"], output=Path("out"), task="caption", init=Path("not/a/folder/here"))
