"""salesforce/BLIP's original `.pth` checkpoints -> the MED.

The key layout is BLIP's own (`visual_encoder.blocks.N.attn.qkv`, `text_encoder.encoder.layer.N`,
`text_decoder.bert...`); it is renamed to transformers' BLIP names the way transformers'
conversion script does (BLIP.md §4), then to the MED's. The files hold no config, so the
architecture is read off the tensor shapes; heads are width / 64, as in every BLIP model (ViT-B,
ViT-L, BERT-base), and a caller with another head size passes its own MEDConfig.

What the MED has no place for is skipped and listed, by pattern, never silently: momentum
encoders (`*_m`), the ITC feature queues and their pointers, and old BERT's `position_ids`.
Anything else unknown fails the strict load.
"""

from __future__ import annotations

import math
import re

import torch

from model.config import MEDConfig, TokenIds, blip_regularisers
from model.hf_interop import preset_name_for
from model.med import MED
from model.weights_io import CheckpointError, assign_state

# Original ViT names -> transformers' BlipVisionModel names, applied in order.
_VISION_RENAMES = [
    (r"^visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
    (r"^visual_encoder\.norm\.", "vision.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision.encoder.layers.\1.mlp."),
]
_SKIP = re.compile(
    r"^(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m)\.|"
    r"^(image_queue|text_queue|idx_queue|ptr_queue|queue_ptr)$|\.position_ids$"
)
TEXT_PREFIXES = ("text_encoder.", "text_decoder.", "vision_proj.", "text_proj.", "itm_head.")


def rename_blip_pth(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original BLIP names -> MED names (text keys are BERT names in both; they pass through)."""
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, tensor in state.items():
        if _SKIP.search(key):
            skipped.append(key)
            continue
        new = key
        for pattern, repl in _VISION_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = tensor
    return out, skipped


def _count_layers(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], tokens: TokenIds) -> MEDConfig:
    """A MEDConfig from the shapes of a renamed (MED-named) state dict."""
    try:
        pos = state["vision.embeddings.position_embedding"]
        patch = state["vision.embeddings.patch_embedding.weight"]
        text = "text_encoder." if "text_encoder.embeddings.word_embeddings.weight" in state else "text_decoder.bert."
        words = state[text + "embeddings.word_embeddings.weight"]
        positions = state[text + "embeddings.position_embeddings.weight"]
        vision_mlp = state["vision.encoder.layers.0.mlp.fc1.weight"].shape[0]
        text_mlp = state[text + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a BLIP checkpoint: no tensor {exc} (after renaming)") from None
    grid = math.isqrt(pos.shape[1] - 1)
    vision_width, text_width = pos.shape[-1], words.shape[-1]
    config = MEDConfig(
        preset="custom",
        image_size=grid * patch.shape[-1], patch_size=patch.shape[-1],
        vision_width=vision_width, vision_layers=_count_layers(state, r"vision\.encoder\.layers\.(\d+)\."),
        vision_heads=max(1, vision_width // 64), vision_mlp=vision_mlp,
        vocab_size=words.shape[0], text_width=text_width,
        text_layers=_count_layers(state, re.escape(text) + r"encoder\.layer\.(\d+)\."),
        text_heads=max(1, text_width // 64), text_mlp=text_mlp, max_positions=positions.shape[0],
        embed_dim=state["vision_proj.weight"].shape[0] if "vision_proj.weight" in state else 256,
        vision_layer_norm_eps=1e-6,  # BLIP's ViT (timm-style) uses 1e-6, not transformers' 1e-5
        tokens=tokens,
    )
    # BLIP's dropout and drop-path, which its own fine-tunes of these weights use.
    config = config.replace(**blip_regularisers(config.vision_layers, config.vision_width))
    return config.replace(preset=preset_name_for(config))


def _decoder_is_tied(state: dict[str, torch.Tensor]) -> bool:
    """True when every weight BLIP's pre-training shares (all but self-attention) is equal in the
    encoder and the decoder: then the MED shares the modules too."""
    for key, tensor in state.items():
        if not key.startswith("text_encoder.") or ".attention." in key:
            continue
        twin = "text_decoder.bert." + key[len("text_encoder."):]
        if twin not in state or state[twin].shape != tensor.shape or not torch.equal(state[twin], tensor):
            return False
    return True


def med_from_blip_pth(
    state: dict[str, torch.Tensor], tokens: TokenIds, source: str, config: MEDConfig | None = None,
    adopt: bool = False,
) -> tuple[MED, MEDConfig, list[str], list[str], tuple[str, ...]]:
    """(MED, its config, skipped keys, keys left at init, trained roles) from an original BLIP
    state dict: a captioner (visual_encoder + text_decoder), a retrieval/ITM model
    (visual_encoder + text_encoder + projections + itm_head), or a pre-trained one (all of it)."""
    renamed, skipped = rename_blip_pth(state)
    config = config or infer_config(renamed, tokens)
    has_encoder = any(k.startswith("text_encoder.") for k in renamed)
    has_decoder = any(k.startswith("text_decoder.") for k in renamed)
    if not (has_encoder or has_decoder):
        raise CheckpointError(f"{source}: no text_encoder or text_decoder tensors")
    roles = tuple(r for r, ok in (("captioner", has_decoder), ("filter", has_encoder and "itm_head.weight" in renamed)) if ok)
    if has_encoder and has_decoder:
        # Where the file's shared weights are equal, they are one tensor in the MED (the strict
        # assignment checks that every alias given agrees).
        med = MED.unfilled(config, tie=_decoder_is_tied(renamed))
        allow: tuple[str, ...] = ("temp",)
        allow += tuple(p for p in ("vision_proj.", "text_proj.", "itm_head.") if p + "weight" not in renamed)
    elif has_decoder:
        src, dst = "text_decoder.bert.", "text_encoder."
        renamed.update({dst + k[len(src):]: v.clone() for k, v in renamed.items() if k.startswith(src)})
        med, allow = MED.unfilled(config, tie=False), ("vision_proj.", "text_proj.", "itm_head.", "temp")
    else:
        src, dst = "text_encoder.", "text_decoder.bert."
        renamed.update({dst + k[len(src):]: v.clone() for k, v in renamed.items() if k.startswith(src)})
        med, allow = MED.unfilled(config, tie=False), ("text_decoder.cls.", "temp")
    left = assign_state(med, renamed, source, allow_missing=allow, adopt=adopt)
    med.init_missing(left)
    return med, config, skipped, left, roles
