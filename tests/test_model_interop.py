"""transformers' BLIP classes and original BLIP `.pth` files <-> the MED, on small checkpoints
that each test makes (random init + noise, save_pretrained / torch.save)."""

import argparse

import pytest
import torch
from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from model.checkpoint import load_checkpoint
from model.hf_interop import export_captioner, export_filter
from model.med import MED
from model_helpers import blip_config, jitter, pixels, save_transformers, small_config, tiny_tokenizer
from model_helpers import to_blip_pth_layout as _to_blip_layout

TEXTS = ["a small red circle on the left", "a big blue star"]
TOL = 1e-5


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def cfg(tok):
    return small_config(tok)


def _with_first(ids: torch.Tensor, token: int) -> torch.Tensor:
    ids = ids.clone()
    ids[:, 0] = token
    return ids


@torch.no_grad()
def greedy_med(med: MED, image_embeds: torch.Tensor, steps: int) -> list[list[int]]:
    """A plain greedy loop over med.lm_logits, no cache: the reference for the captions."""
    t = med.config.tokens
    out = []
    for row in range(image_embeds.shape[0]):
        ids = torch.tensor([[t.dec]])
        for _ in range(steps):
            logits = med.lm_logits(ids, torch.ones_like(ids), image_embeds[row : row + 1])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            if ids[0, -1] == t.sep:
                break
        out.append(ids[0].tolist())
    return out


def _trim(seq: list[int], sep: int) -> list[int]:
    return seq[: seq.index(sep) + 1] if sep in seq else seq


@torch.no_grad()
def assert_captioner_parity(med: MED, hf: BlipForConditionalGeneration, tok, cfg):
    x = pixels(cfg)
    ids, mask = tok.encode(TEXTS, 20)
    embeds = med.encode_image(x)
    ours = med.lm_logits(ids, mask, embeds)
    theirs = hf(pixel_values=x, input_ids=_with_first(ids, cfg.tokens.dec), attention_mask=mask).logits
    assert (ours - theirs).abs().max().item() <= TOL
    generated = hf.generate(pixel_values=x, max_new_tokens=6, num_beams=1, do_sample=False)
    theirs_caps = [_trim(row, cfg.tokens.sep) for row in generated.tolist()]
    assert greedy_med(med, embeds, 6) == theirs_caps
    assert all(len(c) > 2 for c in theirs_caps)  # a real caption, not an instant [SEP]


@torch.no_grad()
def assert_filter_parity(med: MED, hf: BlipForImageTextRetrieval, tok, cfg):
    x = pixels(cfg)
    ids, mask = tok.encode(TEXTS, 20)
    embeds = med.encode_image(x)
    # The [ENC] trap: transformers scores the ids it is given; give it the ids the MED uses.
    theirs = hf(input_ids=_with_first(ids, cfg.tokens.enc), pixel_values=x, attention_mask=mask).itm_score
    ours = med.itm_logits(ids, mask, embeds)
    assert (ours.softmax(-1)[:, 1] - theirs.softmax(-1)[:, 1]).abs().max().item() <= TOL
    # ITC: raw cosine, no temperature, in both
    sim = hf(input_ids=ids, pixel_values=x, attention_mask=mask, use_itm_head=False).itm_score
    ours_sim = med.image_feature(embeds) @ med.text_feature(med.encode_text(ids, mask)).t()
    assert (ours_sim - sim).abs().max().item() <= TOL


def test_blip_captioning_folder_loads_with_same_logits_and_caption(tok, cfg, tmp_path):
    torch.manual_seed(0)
    hf = BlipForConditionalGeneration(blip_config(cfg)).eval()
    jitter(hf)
    ck = load_checkpoint(save_transformers(hf, tok, tmp_path / "cap"))
    assert ck.kind == "blip-caption" and ck.roles == ("captioner",) and not ck.med.tied
    assert set(ck.left_at_init) == {"temp", "itm_head.weight", "itm_head.bias", "vision_proj.weight",
                                    "vision_proj.bias", "text_proj.weight", "text_proj.bias"}
    assert_captioner_parity(ck.med, hf, tok, cfg)
    # the encoder starts as a copy of the decoder's tower
    assert torch.equal(ck.med.text_encoder.encoder.layer[0].crossattention.self.query.weight,
                       hf.text_decoder.bert.encoder.layer[0].crossattention.self.query.weight)


def test_blip_retrieval_folder_loads_with_same_itm_and_itc(tok, cfg, tmp_path):
    torch.manual_seed(1)
    hf = BlipForImageTextRetrieval(blip_config(cfg)).eval()
    jitter(hf)
    ck = load_checkpoint(save_transformers(hf, tok, tmp_path / "itm"))
    assert ck.kind == "blip-itm" and ck.roles == ("filter",)
    assert_filter_parity(ck.med, hf, tok, cfg)


def test_enc_trap_is_real(tok, cfg, tmp_path):
    """Without [ENC] in place, transformers' score differs from the MED's: the swap matters."""
    torch.manual_seed(2)
    med = MED(cfg).eval()
    jitter(med)
    hf = BlipForImageTextRetrieval.from_pretrained(export_filter(med, tok, tmp_path / "f")).eval()
    ids, mask = tok.encode(TEXTS, 20)
    with torch.no_grad():
        x = pixels(cfg)
        plain = hf(input_ids=ids, pixel_values=x, attention_mask=mask).itm_score
        ours = med.itm_logits(ids, mask, med.encode_image(x))
    assert (plain - ours).abs().max().item() > 1e-3


@pytest.mark.parametrize("tie", [True, False])
def test_med_exports_captioner_and_filter(tok, cfg, tmp_path, tie):
    torch.manual_seed(3)
    med = MED(cfg, tie=tie).eval()
    jitter(med)
    cap_dir = export_captioner(med, tok, tmp_path / "cap")
    filt_dir = export_filter(med, tok, tmp_path / "filt")
    assert_captioner_parity(med, BlipForConditionalGeneration.from_pretrained(cap_dir).eval(), tok, cfg)
    assert_filter_parity(med, BlipForImageTextRetrieval.from_pretrained(filt_dir).eval(), tok, cfg)
    # the folders are whole transformers folders: tokenizer and image processor included
    hf_tok = AutoTokenizer.from_pretrained(cap_dir)
    assert hf_tok(TEXTS[:1]).input_ids[0] == tok.encode(TEXTS[:1], 20)[0][0].tolist()
    assert BlipImageProcessorPil.from_pretrained(filt_dir).size["height"] == cfg.image_size
    # and they come back into the MED
    back = load_checkpoint(cap_dir)
    assert_captioner_parity(back.med, BlipForConditionalGeneration.from_pretrained(cap_dir).eval(), tok, cfg)


def test_image_size_change_resizes_position_embeddings(tok, cfg, tmp_path):
    torch.manual_seed(4)
    hf = BlipForConditionalGeneration(blip_config(cfg)).eval()
    ck = load_checkpoint(save_transformers(hf, tok, tmp_path / "cap"), image_size=48)
    pos = ck.med.vision.embeddings.position_embedding
    assert ck.config.image_size == 48 and pos.shape == (1, 1 + 6 * 6, cfg.vision_width)
    assert torch.equal(pos[:, 0], hf.vision_model.embeddings.position_embedding[:, 0])  # [CLS] kept
    with torch.no_grad():
        assert ck.med.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 37, cfg.vision_width)


# ---- original salesforce/BLIP .pth ------------------------------------------------------------
def _blip_pretrain_file(med: MED) -> dict:
    """What BLIP_Pretrain's torch.save leaves: every key (tied ones repeated), momentum copies,
    queues, temp, and an optimizer/config/epoch beside the model."""
    state = _to_blip_layout(med.state_dict())
    for key in [k for k in state if k.startswith(("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj."))]:
        head, rest = key.split(".", 1)
        state[f"{head}_m.{rest}"] = state[key].clone()
    state["text_encoder.embeddings.position_ids"] = torch.arange(med.config.max_positions)[None]
    state["image_queue"] = torch.randn(med.config.embed_dim, 8)
    state["text_queue"] = torch.randn(med.config.embed_dim, 8)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"model": state, "config": {"image_size": med.config.image_size}, "epoch": 19}


@torch.no_grad()
def _assert_same_med(a: MED, b: MED, cfg, modes=("lm", "itm")):
    x = pixels(cfg)
    ids, mask = tiny_tokenizer().encode(TEXTS, 20)
    ea, eb = a.encode_image(x), b.encode_image(x)
    assert (ea - eb).abs().max().item() <= TOL
    if "lm" in modes:
        assert (a.lm_logits(ids, mask, ea) - b.lm_logits(ids, mask, eb)).abs().max().item() <= TOL
    if "itm" in modes:
        assert (a.itm_logits(ids, mask, ea) - b.itm_logits(ids, mask, eb)).abs().max().item() <= TOL


def test_original_blip_pretrain_pth_loads_tied(tok, cfg, tmp_path):
    torch.manual_seed(5)
    med = MED(cfg).eval()
    jitter(med)
    tok.save(tmp_path)
    torch.save(_blip_pretrain_file(med), tmp_path / "model_base.pth")
    ck = load_checkpoint(tmp_path, config=cfg)
    assert ck.kind == "blip-pth" and ck.med.tied and ck.left_at_init == []
    assert ck.roles == ("captioner", "filter")
    assert "image_queue" in ck.skipped and any(k.startswith("visual_encoder_m.") for k in ck.skipped)
    assert ck.med.temp.item() == pytest.approx(med.temp.item())
    _assert_same_med(ck.med, med, cfg)


def test_original_blip_caption_and_retrieval_pth_load(tok, cfg, tmp_path):
    torch.manual_seed(6)
    med = MED(cfg, tie=False).eval()
    jitter(med)
    full = _to_blip_layout(med.state_dict())
    tok.save(tmp_path / "cap")
    caption = {k: v for k, v in full.items() if k.startswith(("visual_encoder.", "text_decoder."))}
    torch.save({"model": caption}, tmp_path / "cap" / "model_base_capfilt_large.pth")
    ck = load_checkpoint(tmp_path / "cap" / "model_base_capfilt_large.pth", config=cfg)
    assert ck.roles == ("captioner",) and not ck.med.tied
    _assert_same_med(ck.med, med, cfg, modes=("lm",))

    tok.save(tmp_path / "itm")
    retrieval = {k: v for k, v in full.items() if not k.startswith("text_decoder.")}
    torch.save({"model": retrieval}, tmp_path / "itm" / "model_base_retrieval_coco.pth")
    ck = load_checkpoint(tmp_path / "itm", config=cfg)
    assert ck.roles == ("filter",)
    _assert_same_med(ck.med, med, cfg, modes=("itm",))


def test_pth_architecture_is_read_off_the_shapes(tok, tmp_path):
    """No config given: widths, layers, image size and vocabulary come from the tensors, heads
    are width / 64 (64 wide -> 1 head here), ViT LayerNorm eps is BLIP's 1e-6."""
    cfg = small_config(tok, vision_heads=1, text_heads=1, vision_layer_norm_eps=1e-6)
    torch.manual_seed(7)
    med = MED(cfg).eval()
    jitter(med)
    tok.save(tmp_path)
    torch.save(_blip_pretrain_file(med), tmp_path / "model.pth")
    ck = load_checkpoint(tmp_path)
    for name in ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp",
                 "vocab_size", "text_width", "text_layers", "text_heads", "text_mlp", "max_positions",
                 "embed_dim", "vision_layer_norm_eps"):
        assert getattr(ck.config, name) == getattr(cfg, name), name
    _assert_same_med(ck.med, med, cfg)


def test_pth_with_pickled_objects_is_refused(tok, tmp_path):
    tok.save(tmp_path)
    # any object other than tensors and containers is refused, harmless or not
    torch.save({"model": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path)
