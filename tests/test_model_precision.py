"""bf16 inference: when "auto" picks it, that a cast keeps the MED's shared weights shared, and
parity with float32 on a small model (ITM probabilities, the decoder's next-token draws, greedy
captions) in the functions and in the caption/filter stages. benchmarks/precision_parity.py
measures the same at BLIP-base shapes."""

import pytest
import torch

import model.precision as precision
from model.generation import GenerationSettings, generate_captions
from model.med import MED
from model.precision import cast_for_inference, inference_dtype, module_dtype
from model.scoring import score_captions
from tests.model_helpers import CORPUS, jitter, pixels, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITM_TOL = 0.02  # |p_bf16 - p_fp32| of the ITM "matched" probability
CAPTIONS = [[CORPUS[0], CORPUS[9]], [CORPUS[4]], [CORPUS[17], CORPUS[40], CORPUS[2]]]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pair(tok):
    """The same jittered model in float32 and in bf16."""
    torch.manual_seed(0)
    cfg = small_config(tok, text_width=128, text_heads=4, text_mlp=256, vision_width=128, vision_heads=4,
                       vision_mlp=256)
    fp32 = MED(cfg)
    jitter(fp32, scale=0.2)
    _spread_itm_head(fp32, tok)
    bf16 = MED(cfg)
    bf16.load_state_dict(fp32.state_dict())
    return fp32.eval(), cast_for_inference(bf16, torch.bfloat16)


@torch.no_grad()
def _spread_itm_head(med: MED, tok) -> None:
    """A random MED's [ENC] outputs differ little between pairs, so its ITM probabilities bunch
    together and any tolerance passes. Point the head along the outputs' main direction of
    variation (over other pairs than the tests score), scaled so that the matched logit's spread
    is ~2: probabilities then span most of (0, 1), as a trained filter's do."""
    texts = CORPUS[20:36]
    ids, mask = tok.encode(texts, med.config.max_text_len)
    embeds = med.encode_image(pixels(med.config, batch=len(texts), seed=11))
    enc = med.encode_multimodal(ids, mask, embeds)[:, 0, :]
    centred = enc - enc.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    scale = 2.0 / (centred @ direction).std()
    med.itm_head.weight.zero_()
    med.itm_head.weight[1] = scale * direction
    med.itm_head.bias.zero_()
    med.itm_head.bias[1] = -(scale * direction @ enc.mean(0))


def test_auto_picks_bf16_only_where_it_is_fast(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert inference_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert inference_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # bf16 emulated: slower
    assert inference_dtype("auto", "cpu") == torch.float32
    assert inference_dtype("bf16", "cpu") == torch.bfloat16 and inference_dtype("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        inference_dtype("fp16", "cpu")  # type: ignore[arg-type]


def test_cast_keeps_shared_weights_shared(pair):
    _, med = pair
    assert module_dtype(med) == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in med.parameters())
    assert med.text_decoder.bert.encoder.layer[0].crossattention is med.text_encoder.encoder.layer[0].crossattention
    assert med.text_decoder.cls.predictions.decoder.weight is med.text_encoder.embeddings.word_embeddings.weight


def test_itm_and_itc_within_tolerance_of_fp32(pair, tok):
    fp32, bf16 = pair
    images = pixels(fp32.config, batch=3, seed=4)  # float32 pixels: the bf16 model casts them
    ref, got = score_captions(fp32, tok, images, CAPTIONS), score_captions(bf16, tok, images, CAPTIONS)
    ref_itm = [p for row in ref.itm for p in row]
    got_itm = [p for row in got.itm for p in row]
    assert max(ref_itm) - min(ref_itm) > 0.1  # the scores spread, so the tolerance means something
    assert max(abs(a - b) for a, b in zip(ref_itm, got_itm)) <= ITM_TOL
    assert max(abs(a - b) for r, g in zip(ref.itc, got.itc) for a, b in zip(r, g)) <= 0.02


@torch.no_grad()
def test_next_token_distributions_close_to_fp32(pair, tok):
    """Teacher-forced over fp32's own nucleus captions: the total variation distance between the
    fp32 and bf16 next-token distributions (the least probability, over couplings, that a draw
    differs) averages <= 0.06 per position; on this model rounding the weights to bf16 alone
    gives ~0.03 and the whole bf16 path ~0.04 (bf16 activations add little: autocast, float32
    LayerNorm and residuals, gives the same)."""
    fp32, bf16 = pair
    images = pixels(fp32.config, batch=4, seed=7)
    settings = GenerationSettings(top_p=0.9, min_length=12, max_length=20)
    texts = [c for row in generate_captions(fp32, tok, images, [0, 1, 2, 3], settings) for c in row]
    ids, mask = tok.encode(texts, 20)
    probs = [m.lm_logits(ids, mask, m.encode_image(images)).float()[mask.bool()].softmax(-1) for m in (fp32, bf16)]
    tv = 0.5 * (probs[0] - probs[1]).abs().sum(-1)  # (positions,)
    assert probs[0].max(-1).values.mean() < 0.9  # not one sure token everywhere, where any precision agrees
    assert tv.mean().item() <= 0.06
    assert tv.max().item() <= 0.3


@torch.no_grad()
def test_greedy_choices_agree_where_fp32_is_decided(pair, tok):
    """Teacher-forced over fp32's greedy captions: bf16's top token is fp32's at every position
    where fp32's top token leads the runner-up by > 0.1 in probability, and at >= 90 % of all
    positions (near-ties flip either way; whole greedy captions then part after the flip)."""
    fp32, bf16 = pair
    images = pixels(fp32.config, batch=8, seed=8)
    greedy = GenerationSettings(top_p=1e-6, min_length=12, max_length=20)  # one token in the nucleus
    texts = [c for row in generate_captions(fp32, tok, images, list(range(8)), greedy) for c in row]
    assert len(set(texts)) > 1  # the captions differ between images
    ids, mask = tok.encode(texts, 20)
    logits = [m.lm_logits(ids, mask, m.encode_image(images)).float()[mask.bool()] for m in (fp32, bf16)]
    top2 = logits[0].softmax(-1).topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 0.1
    agree = logits[0].argmax(-1) == logits[1].argmax(-1)
    assert decided.float().mean() > 0.5
    assert agree[decided].all()
    assert agree.float().mean().item() >= 0.9


def test_stages_load_in_the_precision_asked(tmp_path):
    from bootstrap_world import make_checkpoint
    from pipelines.bootstrap.caption_stage import CaptionStage
    from pipelines.bootstrap.filter_stage import FilterStage
    from pipelines.bootstrap.settings import BootstrapSettings

    ckpt = make_checkpoint(tmp_path / "ckpt")
    base = dict(input="in.parquet", output="out", captioner=ckpt, filter=ckpt)
    assert BootstrapSettings(**base).precision == "auto"
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        settings = BootstrapSettings(**base, precision=name)
        assert module_dtype(CaptionStage(settings).med) == dtype
        assert module_dtype(FilterStage(settings).med) == dtype
    with pytest.raises(ValueError):
        BootstrapSettings(**base, precision="fp16")
