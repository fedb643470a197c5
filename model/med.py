"""BLIP's MED: a ViT and one BERT text transformer used in three modes.

  unimodal text encoder      [CLS] first, no cross-attention               -> ITC
  image-grounded encoder     [ENC] first, cross-attention over ViT tokens  -> ITM
  image-grounded decoder     [DEC] first, causal self-attention            -> LM

The decoder shares every module with the encoder except self-attention (and the LM head,
which is the decoder's own), by sharing the module objects, as BLIP's pre-training does.
The model computes features and logits; losses live in model/losses.py.
Callers pass token ids whose first token is [CLS] (as the tokenizer writes them); each mode
puts its own first token in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.initialization import no_init_weights
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextAttention, BlipTextLMHeadModel, BlipTextModel

from model.config import MEDConfig
from model.dropout import set_text_dropout, set_vision_drop_path
from model.positions import init_position_embedding
from model.vision_attention import use_fused_attention


def tie_decoder_to_encoder(encoder: BlipTextModel, decoder: BlipTextModel) -> None:
    """Make `decoder` use the encoder's modules for everything but self-attention."""
    decoder.embeddings = encoder.embeddings
    for enc_layer, dec_layer in zip(encoder.encoder.layer, decoder.encoder.layer):
        dec_layer.crossattention = enc_layer.crossattention
        dec_layer.intermediate = enc_layer.intermediate
        dec_layer.output = enc_layer.output


class MED(nn.Module):
    def __init__(self, config: MEDConfig, tie: bool = True):
        super().__init__()
        self.config = config
        text_config = config.text_config()
        self.vision = BlipVisionModel(config.vision_config())
        use_fused_attention(self.vision)
        init_position_embedding(self.vision.embeddings.position_embedding, config.position_init)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(text_config)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim)
        self.itm_head = nn.Linear(config.text_width, 2)
        # ITC temperature, learned; clamped by the loss (BLIP: [0.001, 0.5]).
        self.temp = nn.Parameter(torch.tensor(0.07))
        for head in (self.vision_proj, self.text_proj, self.itm_head):
            nn.init.normal_(head.weight, std=config.init_range)
            nn.init.zeros_(head.bias)
        set_vision_drop_path(self.vision, config.vision_drop_path)
        self.tied = tie
        if tie:
            tie_decoder_to_encoder(self.text_encoder, self.text_decoder.bert)
            # The LM head's output matrix is the (now shared) word embedding, as in BERT.
            self.text_decoder.cls.predictions.decoder.weight = self.text_encoder.embeddings.word_embeddings.weight

    @classmethod
    def unfilled(cls, config: MEDConfig, tie: bool = True) -> "MED":
        """A MED built without random init, its tensors left as allocated: for a loader that
        assigns every tensor next (assign_state), and passes the ones the file lacks to
        init_missing. Drawing the init that loading overwrites took ~5 s per BLIP-base model on
        one core, in every caption and filter actor's start-up."""
        with no_init_weights():  # also skips transformers' post-init weight tying: redone below
            med = cls(config, tie=tie)
        med.text_decoder.tie_weights()  # LM head = word embeddings, decoder.bias = predictions.bias
        return med

    @torch.no_grad()
    def init_missing(self, names: list[str]) -> None:
        """A fresh init of the tensors `names` (state-dict names), drawn as __init__ draws them:
        biases 0, LayerNorm weights 1, `temp` 0.07, position embeddings by config.position_init,
        other weights normal(0, init_range)."""
        for name in names:
            owner, _, attr = name.rpartition(".")
            module = self.get_submodule(owner) if owner else self
            tensor = getattr(module, attr)
            if name == "temp":
                tensor.fill_(0.07)
            elif attr == "bias":
                tensor.zero_()
            elif isinstance(module, nn.LayerNorm):
                tensor.fill_(1.0)
            elif name == "vision.embeddings.position_embedding":
                init_position_embedding(tensor, self.config.position_init)
            else:
                tensor.normal_(0.0, self.config.init_range)

    def set_regularisers(
        self, text_hidden_dropout: float | None = None, text_attention_dropout: float | None = None,
        vision_drop_path: float | None = None,
    ) -> None:
        """Change the training-time dropout / drop-path rates (None keeps a rate); the config, and
        so a checkpoint saved later, records them."""
        changes = {k: v for k, v in dict(text_hidden_dropout=text_hidden_dropout, text_attention_dropout=text_attention_dropout,
                                         vision_drop_path=vision_drop_path).items() if v is not None}
        self.config = self.config.replace(**changes)
        for text_model in (self.text_encoder, self.text_decoder):
            set_text_dropout(text_model, self.config.text_hidden_dropout, self.config.text_attention_dropout)
        set_vision_drop_path(self.vision, self.config.vision_drop_path)

    # ---- image -------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + N, Dv); token 0 is the ViT's [CLS]. The pixels are cast to the
        ViT's dtype (a model cast to bf16 takes the float32 pixels that preprocessing writes)."""
        pixel_values = pixel_values.to(self.vision.embeddings.patch_embedding.weight.dtype)
        return self.vision(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).last_hidden_state

    def image_feature(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, Dv) -> (B, E), unit length: the image side of ITC."""
        return F.normalize(self.vision_proj(image_embeds[:, 0, :]), dim=-1)

    # ---- text, three modes -----------------------------------------------------------------
    @staticmethod
    def _with_first(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
        ids = input_ids.clone()
        ids[:, 0] = token_id
        return ids

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal text encoder: (B, T) -> (B, T, Dt), [CLS] first, no cross-attention."""
        ids = self._with_first(input_ids, self.config.tokens.cls)
        return self.text_encoder(input_ids=ids, attention_mask=attention_mask, is_decoder=False).last_hidden_state

    def text_feature(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, Dt) -> (B, E), unit length: the text side of ITC."""
        return F.normalize(self.text_proj(text_embeds[:, 0, :]), dim=-1)

    def encode_multimodal(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Image-grounded text encoder: [ENC] first, cross-attention to every image token."""
        ids = self._with_first(input_ids, self.config.tokens.enc)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.text_encoder(
            input_ids=ids, attention_mask=attention_mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, is_decoder=False,
        ).last_hidden_state

    def itm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, 2) matched/unmatched logits from the [ENC] output; index 1 = matched."""
        return self.itm_head(self.encode_multimodal(input_ids, attention_mask, image_embeds)[:, 0, :])

    def itm_logits_grouped(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor, owner: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits of caption i against image owner[i]: ids (M, T), images (B, 1 + N, Dv),
        owner (M,) -> (M, 2). The same numbers as itm_logits(ids, mask, image_embeds[owner]), but
        each image's cross-attention keys and values are projected once per layer for all its
        captions, where itm_logits projects them once per caption (16 GFLOP per caption at
        BLIP-base, 384 px)."""
        encoder = self.text_encoder
        ids = self._with_first(input_ids, self.config.tokens.enc)
        hidden = encoder.embeddings(input_ids=ids)  # (M, T, Dt)
        self_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
        slots, width = group_slots(owner, image_embeds.shape[0])
        for layer in encoder.encoder.layer:  # BlipTextLayer.forward, with the cross-attention shared
            hidden, _ = layer.attention(hidden, attention_mask=self_mask)
            hidden = _shared_cross_attention(layer.crossattention, hidden, image_embeds, slots, width)
            hidden = layer.feed_forward_chunk(hidden)
        return self.itm_head(hidden[:, 0, :])

    def lm_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        past_key_values=None,
        use_cache: bool = False,
        replace_first: bool = True,
        last_only: bool = False,
    ):
        """Image-grounded decoder: (B, T) -> logits (B, T, V) (and the cache when asked).

        With a cache, `input_ids` are only the new tokens; `replace_first` must then be False.
        last_only: logits of the last position only, (B, 1, V) (a prefill needs no others).
        """
        ids = self._with_first(input_ids, self.config.tokens.dec) if replace_first else input_ids
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_decoder(
            input_ids=ids, attention_mask=attention_mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
            past_key_values=past_key_values, use_cache=use_cache, is_decoder=True, return_logits=False,
            logits_to_keep=1 if last_only else 0,
        )
        return (out.logits, out.past_key_values) if use_cache else out.logits

    # ---- bookkeeping -------------------------------------------------------------------------
    def captioner_modules(self) -> list[nn.Module]:
        return [self.vision, self.text_decoder]

    def filter_modules(self) -> list[nn.Module]:
        return [self.vision, self.text_encoder, self.vision_proj, self.text_proj, self.itm_head]


def group_slots(owner: torch.Tensor, images: int) -> tuple[torch.Tensor, int]:
    """Caption i's row in an (images x width) grid, width = most captions of one image: caption
    i goes to row owner[i] * width + (its rank among that image's captions)."""
    counts = torch.bincount(owner, minlength=images)
    width = int(counts.max()) if owner.numel() else 1
    order = torch.argsort(owner, stable=True)
    starts = torch.cumsum(counts, 0) - counts  # first position of each image in sorted order
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.numel(), device=owner.device) - starts[owner[order]]
    return owner * width + rank, width


def _shared_cross_attention(
    cross: BlipTextAttention, hidden: torch.Tensor, image_embeds: torch.Tensor, slots: torch.Tensor, width: int
) -> torch.Tensor:
    """transformers' BlipTextAttention (cross, no mask) for captions grouped by image: an image's
    K/V are projected once, and the queries of all its captions attend to them in one call, laid
    end to end (attention rows are independent, so this is exact; empty grid rows are zeros and
    are dropped)."""
    attn = cross.self
    b, n = image_embeds.shape[:2]
    m, t, d = hidden.shape
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    keys = attn.key(image_embeds).view(b, n, heads, head_dim).transpose(1, 2)  # (B, H, N, dh)
    values = attn.value(image_embeds).view(b, n, heads, head_dim).transpose(1, 2)
    grid = hidden.new_zeros(b * width, t, d)
    grid[slots] = attn.query(hidden)
    queries = grid.view(b, width * t, heads, head_dim).transpose(1, 2)  # (B, H, width * T, dh)
    context = F.scaled_dot_product_attention(queries, keys, values)  # scale 1/sqrt(dh), as BLIP
    context = context.transpose(1, 2).reshape(b * width, t, d)[slots]  # (M, T, Dt)
    return cross.output(context, hidden)


def count_parameters(modules: list[nn.Module]) -> int:
    """Parameters of `modules`, each shared tensor counted once."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())
