"""model.flops: the counts against PERFORMANCE.md's figures for BLIP-base at 384 px, against a hand
count on the tiny preset, and against what the real modules do (torch's FlopCounterMode), which
also shows that generation caches the image's cross-attention K/V and that the filter projects
them once per image."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.config import preset
from model.flops import (
    caption_flops, capfilt_flops, cross_kv_flops, decode_token_flops, image_tokens, itc_flops, itm_flops,
    prefill_flops, sampling_flops, vit_flops,
)
from model.generation import GenerationSettings, decoder_prefix, generate_captions
from model.med import MED
from tests.model_helpers import CORPUS, jitter, pixels, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
G = 1e9


def test_base_at_384_matches_the_performance_notes():
    base, large = preset("base"), preset("large")
    assert image_tokens(base, 384) == 577
    assert vit_flops(base, 384) / G == pytest.approx(111.0, rel=0.01)  # timm: 55.5 GMACs
    assert vit_flops(large, 384) / G == pytest.approx(382.4, rel=0.01)  # timm: 191.2 GMACs
    assert cross_kv_flops(base, 384) / G == pytest.approx(16.3, rel=0.01)
    assert cross_kv_flops(large, 384) / G == pytest.approx(21.8, rel=0.01)
    assert decode_token_flops(base, 12, 384) / G == pytest.approx(0.27, rel=0.02)
    # the notes count 24 tokens x 0.27; exactly, 23 tokens are fed and 20 need logits
    assert caption_flops(base, 4, 20, 384) / G == pytest.approx(22.8, rel=0.03)
    assert itm_flops(base, 35, 384) / G == pytest.approx(24.1, rel=0.01)
    assert itm_flops(base, 35, 384, with_cross_kv=False) / G == pytest.approx(7.7, rel=0.01)
    one = capfilt_flops(base, base, num_captions=1, prompt_tokens=4, new_tokens=20, itm_tokens=35, itc=False,
                        image_size=384)
    assert one.total / G == pytest.approx(276, rel=0.01)
    # two texts that do not share the image's K/V pay it twice
    unshared = capfilt_flops(base, base, num_captions=1, prompt_tokens=4, new_tokens=20, itm_tokens=35,
                             itc=False, shared_cross_kv=False, image_size=384)
    assert (unshared.filter - one.filter) / G == pytest.approx(16.3, rel=0.01)


def test_tiny_preset_by_hand():
    t = preset("tiny")  # 64 px, patch 8, vision 128 x 4 layers (mlp 256), text 128 x 4 (mlp 256), vocab 1024
    n = 8 * 8 + 1
    patch = 2 * 64 * (3 * 8 * 8) * 128
    vit_layer = 2 * n * (4 * 128 * 128 + 2 * 128 * 256) + 4 * n * n * 128
    assert vit_flops(t) == patch + 4 * vit_layer
    assert cross_kv_flops(t) == 4 * 2 * n * 2 * 128 * 128
    head = 2 * (128 * 128 + 128 * 1024)
    token_at_3 = 4 * (2 * (6 * 128 * 128 + 2 * 128 * 256) + 4 * (3 + n) * 128)  # 3 positions in context
    assert decode_token_flops(t, 3) == token_at_3 + head
    # a 2-token prefix (one 2 x 2 masked product, one head), then 3 new tokens: positions 2, 3 fed back
    assert caption_flops(t, 2, 3, with_cross_kv=False) == (
        2 * decode_token_flops(t, 2, lm_head=False) + head
        + decode_token_flops(t, 3) + decode_token_flops(t, 4))
    itm_text = 4 * (10 * 2 * (6 * 128 * 128 + 2 * 128 * 256) + 4 * 10 * 10 * 128 + 4 * 10 * n * 128) + 2 * 128 * 2
    assert itm_flops(t, 10, with_cross_kv=False) == itm_text
    assert itc_flops(t, 10) == 4 * (10 * 2 * (4 * 128 * 128 + 2 * 128 * 256) + 4 * 10 * 10 * 128) + 2 * 128 * 64
    with pytest.raises(ValueError, match="multiple"):
        vit_flops(t, 60)


# ---- the real modules ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def med(tok):
    torch.manual_seed(0)
    model = MED(small_config(tok))
    jitter(model, scale=0.1)
    return model.eval()


def counted(fn) -> int:
    # The math SDPA kernel is made of matmuls that the counter sees (CPU's fused kernel is not counted).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        fn()
    return counter.get_total_flops()


def test_vit_itc_and_itm_count_what_the_modules_do(med, tok):
    cfg = med.config
    images = pixels(cfg, batch=2, seed=1)
    assert counted(lambda: med.encode_image(images)) == 2 * vit_flops(cfg)
    embeds = med.encode_image(images)
    ids, mask = tok.encode(CORPUS[:4], cfg.max_text_len)  # padded to the longest
    t = ids.shape[1]
    assert counted(lambda: med.text_feature(med.encode_text(ids, mask))) == 4 * itc_flops(cfg, t)
    # per caption, each pays its image's K/V; grouped (2 captions per image), each image pays once
    owner = torch.tensor([0, 0, 1, 1])
    per_caption = counted(lambda: med.itm_logits(ids, mask, embeds[owner]))
    grouped = counted(lambda: med.itm_logits_grouped(ids, mask, embeds, owner))
    assert per_caption == 4 * itm_flops(cfg, t)
    assert grouped == 2 * cross_kv_flops(cfg) + 4 * itm_flops(cfg, t, with_cross_kv=False)


@pytest.mark.parametrize("k", [1, 3])
def test_generation_caches_the_image_keys_and_values(med, tok, k):
    """Captions forced to full length (min_length = max_length): the work is one ViT pass, one
    cross K/V projection and one prefill per image, then k captions' cached steps. Were the cross
    K/V re-projected at each step, each step would add cross_kv_flops."""
    cfg = med.config
    images = pixels(cfg, batch=2, seed=2)
    settings = GenerationSettings(num_captions=k, min_length=16, max_length=16)
    prompt = len(decoder_prefix(tok, settings.prompt, cfg.tokens))
    new = settings.max_length - prompt
    flops = counted(lambda: generate_captions(med, tok, images, [1, 2], settings))
    per_image = vit_flops(cfg) + cross_kv_flops(cfg) + prefill_flops(cfg, prompt) + k * sampling_flops(cfg, prompt, new)
    assert flops == 2 * per_image
