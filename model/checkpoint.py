"""capfilt checkpoints: a directory that a training job, the captioner and the filter all load.

    config.json        {"format": "capfilt-med", "format_version": 1, "tied": ..., "config": MEDConfig}
    model.safetensors  the MED's state, each shared tensor once (under its first name)
    tokenizer files    tokenizer.json, vocab.txt, tokenizer_config.json (model/tokenizer.py)
    extra.json         optional: whatever the writer wants kept beside the weights

`load_checkpoint` also reads, as they come, a transformers BLIP folder (`save_pretrained` of
BlipForConditionalGeneration or BlipForImageTextRetrieval, with its tokenizer) and an original
salesforce/BLIP `.pth` (with BLIP's tokenizer files beside it). Every load is strict. Besides a
path it takes a released-weights preset or a hub name (model/hub.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from transformers import BlipConfig

from model.atomic_write import replacing_folder
from model.blip_pth import med_from_blip_pth
from model.config import MEDConfig
from model.hub import ResolvedCheckpoint, resolve_checkpoint
from model.checkpoint_files import (
    CONFIG_FILE, EXTRA_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, Kind, checkpoint_hash, detect_kind,
)
from model.hf_interop import med_config_from_blip, med_from_captioning_state, med_from_retrieval_state
from model.med import MED
from model.tokenizer import TextTokenizer
from model.weights_io import (
    CheckpointError, assign_state, read_hf_weights, read_safetensors, read_torch_file,
    resize_position_embedding, unique_state,
)

POS_KEY = "vision.embeddings.position_embedding"


@dataclass
class Checkpoint:
    med: MED
    tokenizer: TextTokenizer
    config: MEDConfig
    sha256: str | None  # None where the loader was asked not to hash (hashed=False)
    kind: Kind
    path: Path
    roles: tuple[str, ...] = ("captioner", "filter")  # the modes whose weights are trained
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # foreign keys the MED has no place for
    left_at_init: list[str] = field(default_factory=list)  # MED tensors the file had no weights for
    source: ResolvedCheckpoint | None = None  # the reference it was loaded by, and where that led


# ---- saving ----------------------------------------------------------------------------------
def save_checkpoint(
    directory: str | Path, med: MED, tokenizer: TextTokenizer, extra: dict[str, Any] | None = None
) -> Path:
    """Write the checkpoint to a temporary folder beside `directory`, then rename it into place
    (replacing an old one), so that a reader never sees a half-written checkpoint."""
    if tokenizer.vocab_size != med.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model {med.config.vocab_size}")
    if tokenizer.ids != med.config.tokens:
        raise ValueError(f"tokenizer special ids {tokenizer.ids} differ from the config's {med.config.tokens}")
    with replacing_folder(directory) as tmp:
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "tied": med.tied, "config": med.config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        state = {k: v.cpu() for k, v in unique_state(med).items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        tokenizer.save(tmp)
        if extra is not None:
            (tmp / EXTRA_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return Path(directory)


# ---- loading ---------------------------------------------------------------------------------
def _load_tokenizer(directory: Path, what: str) -> TextTokenizer:
    try:
        return TextTokenizer.load(directory)
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory}: {what} has no tokenizer files; save the tokenizer (or BLIP's processor) into the same folder"
        ) from None


def _resize_for(state: dict, config: MEDConfig, image_size: int | None) -> MEDConfig:
    """BLIP pre-trains at 224 and fine-tunes at 384: a different image size resizes the ViT's
    position embeddings in `state` (in place) and returns the config at the new size."""
    if image_size is None or image_size == config.image_size:
        return config
    if image_size % config.patch_size:
        raise CheckpointError(f"image size {image_size} is not a multiple of the patch size {config.patch_size}")
    if POS_KEY in state:
        state[POS_KEY] = resize_position_embedding(state[POS_KEY], image_size // config.patch_size)
    return config.replace(image_size=image_size)


def load_checkpoint(
    path: str | Path,
    device: str = "cpu",
    *,
    image_size: int | None = None,
    config: MEDConfig | None = None,
    hashed: bool = True,
    adopt: bool = False,
) -> Checkpoint:
    """Load any supported checkpoint into a MED (eval mode) on `device`.

    `image_size` resizes the ViT's position embeddings; `config` overrides the architecture read
    off a `.pth` (which carries none) when its heads are not width / 64. `path` may also be a
    released-weights preset or a hub name (model/hub.py). hashed=False leaves `sha256` None: for
    a loader that records no identity (a bootstrap stage actor: its driver hashes the checkpoint
    once for the manifest), as hashing reads every byte of the weights again. adopt=True makes the
    tensors read the model's own weights instead of copying them (model.weights_io.assign_state):
    one pass over the weights fewer, for a loader that holds no other copy of the file's tensors.
    """
    resolved = resolve_checkpoint(path)
    path = resolved.path
    kind = detect_kind(path)
    directory = path.parent if path.is_file() else path
    sha = checkpoint_hash(path) if hashed else None
    extra: dict[str, Any] = {}
    skipped: list[str] = []
    left: list[str] = []
    roles: tuple[str, ...] = ("captioner", "filter")
    if kind == "capfilt":
        header = json.loads((directory / CONFIG_FILE).read_text())
        if header.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{directory / CONFIG_FILE}: format_version {header.get('format_version')} is not {FORMAT_VERSION}")
        tokenizer = _load_tokenizer(directory, "checkpoint")
        med_config = MEDConfig.from_dict(header["config"])
        state = read_safetensors(directory / WEIGHTS_FILE)
        med_config = _resize_for(state, med_config, image_size)
        med = MED.unfilled(med_config, tie=bool(header.get("tied", True)))
        assign_state(med, state, str(directory / WEIGHTS_FILE), adopt=adopt)  # strict: every tensor or an error
        if (directory / EXTRA_FILE).is_file():
            extra = json.loads((directory / EXTRA_FILE).read_text())
        roles = tuple(extra.get("roles", roles))
    elif kind in ("blip-caption", "blip-itm"):
        tokenizer = _load_tokenizer(directory, "transformers BLIP folder")
        med_config = med_config_from_blip(BlipConfig.from_pretrained(directory), tokenizer.ids)
        state, source = read_hf_weights(directory)
        if image_size is not None and image_size != med_config.image_size:
            key = "vision_model.embeddings.position_embedding"
            state[key] = resize_position_embedding(state[key], image_size // med_config.patch_size)
            med_config = med_config.replace(image_size=image_size)
        convert = med_from_captioning_state if kind == "blip-caption" else med_from_retrieval_state
        med, skipped, left = convert(state, med_config, source, adopt=adopt)
        roles = ("captioner",) if kind == "blip-caption" else ("filter",)
    else:
        pth = path if path.is_file() else next(directory.glob("*.pth"))
        tokenizer = _load_tokenizer(directory, "BLIP .pth checkpoint")
        state = read_torch_file(pth)
        if config is not None and image_size is None:
            image_size = config.image_size
        if "visual_encoder.pos_embed" in state and image_size is not None:
            patch = state["visual_encoder.patch_embed.proj.weight"].shape[-1]
            state["visual_encoder.pos_embed"] = resize_position_embedding(state["visual_encoder.pos_embed"], image_size // patch)
        med, med_config, skipped, left, roles = med_from_blip_pth(state, tokenizer.ids, str(pth), config, adopt=adopt)
    if med_config.vocab_size < tokenizer.vocab_size:  # a larger model vocabulary is padding, fine
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.vocab_size} tokens, the model only {med_config.vocab_size}")
    med.to(device).eval()
    return Checkpoint(
        med=med, tokenizer=tokenizer, config=med_config, sha256=sha, kind=kind, path=directory,
        roles=roles, extra=extra, skipped=skipped, left_at_init=left, source=resolved,
    )
