"""FLOPs of each CapFilt stage, for any MEDConfig and image size.

Counts what the matrix products do (2 FLOPs per multiply-add, as timm's GMACs x 2 and
torch.utils.flop_counter count): every Linear, the patch embedding, and the attention products
(QK^T and AV). LayerNorm, softmax, GELU, embeddings lookups and sampling are left out; at BLIP's
sizes they are well under 1 % of the total.

The units of work, per image unless said otherwise:
  vit           one image through the ViT
  cross_kv      the cross-attention keys and values of one image's tokens, every text layer
                (computed once per image and shared by all its captions, when the code does so)
  decode token  one token through the decoder with its self- and cross-attention K/V cached
  prefill       [DEC] and the prompt, once per image, logits at the last position only
  sampling      one caption's generated tokens after the prefill, cache on
  itm           one caption through the image-grounded encoder (its ITM score)
  itc           one caption through the unimodal text encoder (its ITC feature)

PERFORMANCE.md's anchors for ViT-B/16 + BERT-base at 384 px (577 image tokens): ViT 111 GFLOP,
cross K/V 16.3, decode 0.27 per token, a 4 + 20 token caption 22.8 with the cache, ITM of a
35-token text 7.7 + 16.3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.config import MEDConfig


def image_tokens(config: MEDConfig, image_size: int | None = None) -> int:
    """ViT tokens of one image: the patches plus [CLS]."""
    size = image_size or config.image_size
    if size % config.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {config.patch_size}")
    return (size // config.patch_size) ** 2 + 1


def vit_flops(config: MEDConfig, image_size: int | None = None) -> float:
    """One image through the ViT: patch embedding, then per layer QKV, output projection, MLP
    and the two attention products over all tokens."""
    n = image_tokens(config, image_size)
    d, m = config.vision_width, config.vision_mlp
    patch = 2.0 * (n - 1) * (3 * config.patch_size**2) * d
    linear = 2.0 * n * (4 * d * d + 2 * d * m)  # qkv (3 d^2) + projection (d^2) + fc1, fc2
    attention = 2.0 * 2 * n * n * d  # QK^T and AV
    return patch + config.vision_layers * (linear + attention)


def cross_kv_flops(config: MEDConfig, image_size: int | None = None) -> float:
    """Keys and values of one image's tokens for the cross-attention of every text layer."""
    n = image_tokens(config, image_size)
    return config.text_layers * 2.0 * n * 2 * config.vision_width * config.text_width


def _text_token_linear(config: MEDConfig, cross: bool) -> float:
    """Linear FLOPs of one text token through one layer: self-attention Q, K, V, O, the
    cross-attention's Q and O when `cross`, and the feed-forward."""
    d, m = config.text_width, config.text_mlp
    return 2.0 * ((4 + (2 if cross else 0)) * d * d + 2 * d * m)


def lm_head_flops(config: MEDConfig) -> float:
    """One position's logits: the head's dense transform and the vocabulary projection."""
    d = config.text_width
    return 2.0 * (d * d + d * config.vocab_size)


def decode_token_flops(config: MEDConfig, context: int, image_size: int | None = None,
                       lm_head: bool = True) -> float:
    """One token through the decoder with the cache: it attends to `context` self-attention
    positions (itself included) and to the image's tokens, whose K/V are already cached."""
    n = image_tokens(config, image_size)
    d = config.text_width
    attention = 2.0 * 2 * (context + n) * d
    return config.text_layers * (_text_token_linear(config, cross=True) + attention) + (
        lm_head_flops(config) if lm_head else 0.0)


def prefill_flops(config: MEDConfig, prompt_tokens: int, image_size: int | None = None) -> float:
    """[DEC] and the prompt through the decoder, once per image (its K captions share it), with
    logits at the last position only. The causal self-attention is one masked (P x P) product,
    so every position pays for P keys."""
    if prompt_tokens < 1:
        raise ValueError("the decoder's prefix holds at least [DEC]")
    fed = prompt_tokens * decode_token_flops(config, prompt_tokens, image_size, lm_head=False)
    return fed + lm_head_flops(config)


def sampling_flops(config: MEDConfig, prompt_tokens: int, new_tokens: int, image_size: int | None = None) -> float:
    """One caption's generated tokens after the prefill: each but the last (which is picked but
    never fed back) goes through the decoder, with its logits."""
    return sum(decode_token_flops(config, pos + 1, image_size)
               for pos in range(prompt_tokens, prompt_tokens + new_tokens - 1))


def caption_flops(config: MEDConfig, prompt_tokens: int, new_tokens: int, image_size: int | None = None,
                  with_cross_kv: bool = True) -> float:
    """One caption alone: its prefill, its `new_tokens` draws (logits at `new_tokens`
    positions), and with_cross_kv the image's cross K/V."""
    if new_tokens < 1:
        raise ValueError("a caption draws at least one token")
    total = prefill_flops(config, prompt_tokens, image_size) + sampling_flops(config, prompt_tokens, new_tokens, image_size)
    return total + (cross_kv_flops(config, image_size) if with_cross_kv else 0.0)


def itm_flops(config: MEDConfig, text_tokens: int, image_size: int | None = None,
              with_cross_kv: bool = True) -> float:
    """One caption of `text_tokens` (padding included: padded positions are computed too)
    through the image-grounded encoder, bidirectional, cross-attending to every image token;
    with_cross_kv adds the image's cross K/V (once per image when its captions share it)."""
    n = image_tokens(config, image_size)
    d, t = config.text_width, text_tokens
    per_layer = t * _text_token_linear(config, cross=True) + 2.0 * 2 * t * t * d + 2.0 * 2 * t * n * d
    head = 2.0 * d * 2  # the ITM head on [ENC]
    return config.text_layers * per_layer + head + (cross_kv_flops(config, image_size) if with_cross_kv else 0.0)


def itc_flops(config: MEDConfig, text_tokens: int) -> float:
    """One caption through the unimodal text encoder (no cross-attention) and its projection."""
    d, t = config.text_width, text_tokens
    per_layer = t * _text_token_linear(config, cross=False) + 2.0 * 2 * t * t * d
    return config.text_layers * per_layer + 2.0 * d * config.embed_dim


@dataclass(frozen=True)
class CapFiltWork:
    """The work of one image, by stage (FLOPs)."""

    caption: float  # captioner ViT + K captions
    filter: float  # filter ViT + ITM (and ITC) of the web caption and the K synthetic ones

    @property
    def total(self) -> float:
        return self.caption + self.filter

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def capfilt_flops(
    captioner: MEDConfig, filter: MEDConfig, *, num_captions: int, prompt_tokens: int, new_tokens: int,
    itm_tokens: int, web_caption: bool = True, itc: bool = True, shared_cross_kv: bool = True,
    image_size: int | None = None,
) -> CapFiltWork:
    """One image's FLOPs through caption and filter.

    itm_tokens: the (padded) length of each scored text; shared_cross_kv: the filter computes an
    image's cross K/V once for all its captions (else once per caption, as a per-caption ITM
    call does). The captioner shares the image's cross K/V and the prompt's prefill across its K
    captions, as model.generation does."""
    texts = num_captions + (1 if web_caption else 0)
    caption = (vit_flops(captioner, image_size) + cross_kv_flops(captioner, image_size)
               + prefill_flops(captioner, prompt_tokens, image_size)
               + num_captions * sampling_flops(captioner, prompt_tokens, new_tokens, image_size))
    kv_times = 1 if shared_cross_kv else texts
    filt = vit_flops(filter, image_size) if texts else 0.0
    if texts:
        filt += kv_times * cross_kv_flops(filter, image_size)
        filt += texts * itm_flops(filter, itm_tokens, image_size, with_cross_kv=False)
        if itc:
            filt += texts * itc_flops(filter, itm_tokens)
    return CapFiltWork(caption=caption, filter=filt)
