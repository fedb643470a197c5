"""MED configuration and the registry of named presets (tiny, base, large).

A preset is data, not a code path: every size builds the same modules from a `MEDConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: every `capfilt` command reads this module, and
    # transformers brings torch (~2.5 s of a command's start on a 2-core machine)
    from transformers import BlipTextConfig, BlipVisionConfig

# CLIP's normalisation, which BLIP and transformers' BlipImageProcessor use.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TokenIds:
    """Special token ids; BLIP's bert-base-uncased values are the defaults."""

    pad: int = 0
    cls: int = 101
    sep: int = 102
    dec: int = 30522  # [DEC], bos of the decoder
    enc: int = 30523  # [ENC], first token of the image-grounded encoder


@dataclass(frozen=True)
class MEDConfig:
    preset: str
    # vision (ViT)
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    # text (BERT with cross-attention in every layer)
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    max_positions: int = 512
    embed_dim: int = 256  # ITC projection
    vision_layer_norm_eps: float = 1e-5
    text_layer_norm_eps: float = 1e-12
    # transformers' BLIP vision config defaults to 1e-10 because it expects pretrained
    # weights; a model trained from scratch needs a real range.
    init_range: float = 0.02
    # How a fresh ViT position embedding starts (model/positions.py): "random" as BLIP, or
    # "sincos", the grid's geometry, for models trained from scratch.
    position_init: str = "random"
    # Training-time regularisers (model/dropout.py); no effect in eval mode. BLIP's BERT config:
    # 0.1 on hidden states and on attention probabilities; its ViT: drop-path 0.1 for ViT-L, 0
    # for ViT-B, no dropout.
    text_hidden_dropout: float = 0.1
    text_attention_dropout: float = 0.1
    vision_drop_path: float = 0.0
    max_text_len: int = 35
    tokens: TokenIds = field(default_factory=TokenIds)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def replace(self, **changes: Any) -> "MEDConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MEDConfig":
        data = dict(data)
        if "dropout" in data:  # format of checkpoints saved before the split rates: one rate, always 0
            legacy = data.pop("dropout")
            data.setdefault("text_hidden_dropout", legacy)
            data.setdefault("text_attention_dropout", legacy)
            data.setdefault("vision_drop_path", 0.0)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"MEDConfig: unknown keys {sorted(unknown)}")
        data["tokens"] = TokenIds(**data.get("tokens", {}))
        for key in ("image_mean", "image_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def vision_config(self) -> BlipVisionConfig:
        from transformers import BlipVisionConfig

        return BlipVisionConfig(
            hidden_size=self.vision_width,
            intermediate_size=self.vision_mlp,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            layer_norm_eps=self.vision_layer_norm_eps,
            attention_dropout=0.0,  # BLIP's ViT has none (drop-path instead: model/dropout.py)
            initializer_range=self.init_range,
        )

    def text_config(self) -> BlipTextConfig:
        from transformers import BlipTextConfig

        return BlipTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            encoder_hidden_size=self.vision_width,
            intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.max_positions,
            layer_norm_eps=self.text_layer_norm_eps,
            hidden_dropout_prob=self.text_hidden_dropout,
            attention_probs_dropout_prob=self.text_attention_dropout,
            initializer_range=self.init_range,
            pad_token_id=self.tokens.pad,
            bos_token_id=self.tokens.dec,
            sep_token_id=self.tokens.sep,
            eos_token_id=self.tokens.sep,
            is_decoder=True,  # builds the cross-attention blocks
        )


PRESETS: dict[str, MEDConfig] = {
    # CPU and the toy world: 64 px, a few layers; vocab is set from the toy tokenizer.
    "tiny": MEDConfig(
        preset="tiny", image_size=64, patch_size=8,
        vision_width=128, vision_layers=4, vision_heads=4, vision_mlp=256,
        vocab_size=1024, text_width=128, text_layers=4, text_heads=4, text_mlp=256,
        max_positions=64, embed_dim=64, max_text_len=32,
        # The tiny recipe (README, "The tiny recipe"; figures in its benchmark table and in
        # benchmarks/results/, not here, where they would go stale):
        # BERT's 0.02 suits width 768; at width 128 every caption's [CLS] starts nearly the same and
        # ITC/ITM sit at their prior for hundreds of steps (benchmarks/filter_plateau.py).
        init_range=0.05,
        # a captioner from scratch learns where things are from a sine-cosine start, hardly from
        # noise (benchmarks/position_init.py)
        position_init="sincos",
        # no dropout: the toy models learn from scratch in a few hundred steps (underfit, not
        # overfit); BLIP's 0.1 is for fine-tuning pre-trained weights (training flags can set it)
        text_hidden_dropout=0.0, text_attention_dropout=0.0,
        # the toy WordPiece tokenizer puts its specials first, in this order
        tokens=TokenIds(pad=0, cls=2, sep=3, dec=5, enc=6),
    ),
    # ViT-B/16 + BERT-base, as BLIP (224 for pre-training, 384 for fine-tuning).
    "base": MEDConfig(
        preset="base", image_size=224, patch_size=16,
        vision_width=768, vision_layers=12, vision_heads=12, vision_mlp=3072,
        vocab_size=30524, text_width=768, text_layers=12, text_heads=12, text_mlp=3072,
    ),
    # ViT-L/16 + BERT-base.
    "large": MEDConfig(
        preset="large", image_size=224, patch_size=16,
        vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp=4096,
        vocab_size=30524, text_width=768, text_layers=12, text_heads=12, text_mlp=3072,
        vision_drop_path=0.1,  # BLIP's create_vit: ViT-L always 0.1
    ),
}


def blip_regularisers(vision_layers: int, vision_width: int) -> dict[str, float]:
    """BLIP's dropout and drop-path for a model of this ViT size (an imported BLIP checkpoint is
    fine-tuned with them): ViT-L (24 layers, width 1024) gets drop-path 0.1, others 0."""
    large = vision_layers >= 24 and vision_width >= 1024
    return {"text_hidden_dropout": 0.1, "text_attention_dropout": 0.1, "vision_drop_path": 0.1 if large else 0.0}


def preset(name: str, **changes: Any) -> MEDConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
