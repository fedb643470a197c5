"""transformers' BLIP classes <-> the MED: one conversion function per direction and format.

  BlipForConditionalGeneration (vision_model + text_decoder)          -> MED, captioner trained
  BlipForImageTextRetrieval (vision_model + text_encoder + proj + itm) -> MED, filter trained
  MED -> BlipForConditionalGeneration (export_captioner), BlipForImageTextRetrieval (export_filter)

A foreign checkpoint has one text tower, so the MED it loads into is untied (MED(tie=False)),
and the absent tower starts as a copy of the present one: BLIP's pre-training shares every
weight but self-attention between the two, so this is the nearest thing to trained weights the
other mode can have (e.g. to fine-tune a filter from a captioner). Heads that the file has no
weights for (the ITC projections and ITM head of a captioner, the LM head's transform of a
filter, `temp`) keep their init and are listed; `roles` says which mode is really trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

from model.atomic_write import replacing_folder
from model.config import PRESETS, MEDConfig, TokenIds, blip_regularisers
from model.med import MED
from model.weights_io import CheckpointError, assign_state


# The fields that make an architecture; a foreign config matching a preset on all of them is
# reported as that preset (image size and vocabulary may differ).
_ARCH_FIELDS = ("patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp",
                "text_width", "text_layers", "text_heads", "text_mlp")


def preset_name_for(config: MEDConfig) -> str:
    for name, candidate in PRESETS.items():
        if all(getattr(candidate, f) == getattr(config, f) for f in _ARCH_FIELDS):
            return name
    return "custom"


# ---- configs ---------------------------------------------------------------------------------
def med_config_from_blip(blip: BlipConfig, tokens: TokenIds) -> MEDConfig:
    """The MEDConfig of a transformers BLIP config; refuses what the MED cannot represent."""
    v, t = blip.vision_config, blip.text_config
    for name, act in (("vision", v.hidden_act), ("text", t.hidden_act)):
        if act != "gelu":
            raise CheckpointError(f"{name} hidden_act {act!r} is not supported (BLIP uses gelu)")
    if t.bos_token_id is not None and t.bos_token_id != tokens.dec:
        raise CheckpointError(f"config bos_token_id {t.bos_token_id} is not the tokenizer's [DEC] id {tokens.dec}")
    if t.sep_token_id is not None and t.sep_token_id != tokens.sep:
        raise CheckpointError(f"config sep_token_id {t.sep_token_id} is not the tokenizer's [SEP] id {tokens.sep}")
    config = MEDConfig(
        preset="custom",
        image_size=v.image_size, patch_size=v.patch_size,
        vision_width=v.hidden_size, vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads,
        vision_mlp=v.intermediate_size, vision_layer_norm_eps=v.layer_norm_eps,
        vocab_size=t.vocab_size, text_width=t.hidden_size, text_layers=t.num_hidden_layers,
        text_heads=t.num_attention_heads, text_mlp=t.intermediate_size,
        max_positions=t.max_position_embeddings, text_layer_norm_eps=t.layer_norm_eps,
        embed_dim=blip.image_text_hidden_size, tokens=tokens,
        # BLIP trained and fine-tunes these weights with its dropout and drop-path; transformers'
        # configs say 0, which matters only if the import is fine-tuned: use BLIP's.
        **blip_regularisers(v.num_hidden_layers, v.hidden_size),
    )
    return config.replace(preset=preset_name_for(config))


def blip_config_from_med(config: MEDConfig) -> BlipConfig:
    return BlipConfig(
        text_config=config.text_config().to_dict(),
        vision_config=config.vision_config().to_dict(),
        image_text_hidden_size=config.embed_dim,
    )


# ---- transformers -> MED ---------------------------------------------------------------------
def _rename(state: dict[str, torch.Tensor], prefixes: dict[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Foreign prefix -> MED prefix. Old BERT's persistent `position_ids` buffers are skipped
    (listed); any other unknown key passes through under its own name, so that the strict
    assignment reports it as unexpected."""
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, tensor in state.items():
        if key.endswith(".position_ids"):
            skipped.append(key)
            continue
        for old, new in prefixes.items():
            if key.startswith(old):
                out[new + key[len(old):]] = tensor
                break
        else:
            out[key] = tensor
    return out, skipped


def _copy_tower(state: dict[str, torch.Tensor], src: str, dst: str) -> None:
    for key in [k for k in state if k.startswith(src)]:
        state[dst + key[len(src):]] = state[key].clone()


def med_from_captioning_state(
    state: dict[str, torch.Tensor], config: MEDConfig, source: str, adopt: bool = False
) -> tuple[MED, list[str], list[str]]:
    """A BlipForConditionalGeneration state dict -> (MED untied, skipped keys, keys left at init)."""
    mapped, skipped = _rename(state, {"vision_model.": "vision.", "text_decoder.": "text_decoder."})
    _copy_tower(mapped, "text_decoder.bert.", "text_encoder.")
    med = MED.unfilled(config, tie=False)
    left = assign_state(med, mapped, source, allow_missing=("vision_proj.", "text_proj.", "itm_head.", "temp"), adopt=adopt)
    med.init_missing(left)
    return med, skipped, left


def med_from_retrieval_state(
    state: dict[str, torch.Tensor], config: MEDConfig, source: str, adopt: bool = False
) -> tuple[MED, list[str], list[str]]:
    """A BlipForImageTextRetrieval state dict -> (MED untied, skipped keys, keys left at init)."""
    mapped, skipped = _rename(state, {"vision_model.": "vision.", "text_encoder.": "text_encoder."})
    _copy_tower(mapped, "text_encoder.", "text_decoder.bert.")
    med = MED.unfilled(config, tie=False)
    left = assign_state(med, mapped, source, allow_missing=("text_decoder.cls.", "temp"), adopt=adopt)
    med.init_missing(left)
    return med, skipped, left


# ---- MED -> transformers ---------------------------------------------------------------------
def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def captioner_to_transformers(med: MED) -> BlipForConditionalGeneration:
    model = BlipForConditionalGeneration(blip_config_from_med(med.config))
    state = _prefixed("vision_model.", med.vision) | _prefixed("text_decoder.", med.text_decoder)
    assign_state(model, state, "MED captioner")
    return model.eval()


def filter_to_transformers(med: MED) -> BlipForImageTextRetrieval:
    model = BlipForImageTextRetrieval(blip_config_from_med(med.config))
    state = _prefixed("vision_model.", med.vision) | _prefixed("text_encoder.", med.text_encoder)
    for name in ("vision_proj", "text_proj", "itm_head"):
        state |= _prefixed(name + ".", getattr(med, name))
    assign_state(model, state, "MED filter")
    return model.eval()


def _save_transformers(model, tokenizer, config: MEDConfig, directory: str | Path) -> Path:
    """save_pretrained + the tokenizer + BlipImageProcessor's config, written to a temporary
    folder beside `directory` and renamed into place, so a reader never sees half a folder."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    with replacing_folder(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        BlipImageProcessorPil(
            size={"height": config.image_size, "width": config.image_size},
            image_mean=list(config.image_mean), image_std=list(config.image_std),
        ).save_pretrained(tmp)
    return Path(directory)


def export_captioner(med: MED, tokenizer, directory: str | Path) -> Path:
    """The MED's captioner as a BlipForConditionalGeneration folder (from_pretrained loads it)."""
    return _save_transformers(captioner_to_transformers(med), tokenizer, med.config, directory)


def export_filter(med: MED, tokenizer, directory: str | Path) -> Path:
    """The MED's filter as a BlipForImageTextRetrieval folder. Note: transformers scores ITM
    with the ids it is given; feed it [ENC] at position 0, as the MED was trained."""
    return _save_transformers(filter_to_transformers(med), tokenizer, med.config, directory)
