"""A checkpoint on disk, read without torch: its files and kind, its hash, the roles it was
trained for. The bootstrap driver hashes and checks its checkpoints with these alone, so that it
never imports torch or transformers (~3 s of CPU on a 2-core machine, taken from the actors
starting beside it); model/checkpoint.py loads and saves the weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from model.checkpoint_error import CheckpointError

FORMAT = "capfilt-med"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXTRA_FILE = "extra.json"
# transformers' class names, as a folder's config.json lists them under "architectures"
CAPTION_ARCH = "BlipForConditionalGeneration"
RETRIEVAL_ARCH = "BlipForImageTextRetrieval"
# What the hash covers: the weights, the config, and the tokenizer (a different vocabulary is a
# different model). extra.json is left out: it describes the weights, it is not them.
HASHED_SUFFIXES = (".safetensors", ".pth", ".bin", ".json", ".txt")

Kind = Literal["capfilt", "blip-caption", "blip-itm", "blip-pth"]


def _hashed_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.name != EXTRA_FILE and not p.name.startswith(".") and p.name.endswith(HASHED_SUFFIXES)
    )


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over (file name, file sha256) of the weight, config and tokenizer files, in name
    order: the same bytes give the same hash wherever the folder lives. For a `.pth` file: that
    file and the config and tokenizer files beside it (not the folder's other weight files)."""
    path = Path(path)
    if path.is_file():
        files = sorted([path, *(p for p in _hashed_files(path.parent) if p.suffix in (".json", ".txt"))])
    else:
        files = _hashed_files(path)
    outer = hashlib.sha256()
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def detect_kind(path: str | Path) -> Kind:
    path = Path(path)
    if path.is_file() and path.suffix == ".pth":
        return "blip-pth"
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    config_path = path / CONFIG_FILE
    if config_path.is_file():
        data = json.loads(config_path.read_text())
        if data.get("format") == FORMAT:
            return "capfilt"
        archs = data.get("architectures") or []
        if CAPTION_ARCH in archs:
            return "blip-caption"
        if RETRIEVAL_ARCH in archs:
            return "blip-itm"
        raise CheckpointError(f"{config_path}: neither a capfilt checkpoint nor one of {CAPTION_ARCH}, {RETRIEVAL_ARCH} (architectures {archs})")
    if len(list(path.glob("*.pth"))) == 1:
        return "blip-pth"
    raise CheckpointError(f"{path}: no {CONFIG_FILE} and not exactly one .pth file")


def image_size_on_disk(path: str | Path) -> int | None:
    """The image size a checkpoint's config states, read without loading its weights; None where
    only the weights tell (a BLIP .pth, whose size is its position embedding's) or the config is
    silent (load_checkpoint then says)."""
    kind = detect_kind(path)
    if kind == "blip-pth":
        return None
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    section = config.get("config", {}) if kind == "capfilt" else config.get("vision_config", {})
    return section.get("image_size")


def roles_on_disk(path: str | Path) -> tuple[str, ...] | None:
    """What a checkpoint was trained for, read without loading its weights: a capfilt folder's
    extra.json roles, a transformers captioning / ITM folder's head; None for a BLIP .pth, whose
    roles only its weights tell (model/blip_pth.py)."""
    kind = detect_kind(path)
    if kind == "capfilt":
        extra = Path(path) / EXTRA_FILE
        roles = json.loads(extra.read_text()).get("roles") if extra.is_file() else None
        return tuple(roles) if roles is not None else ("captioner", "filter")
    return {"blip-caption": ("captioner",), "blip-itm": ("filter",)}.get(kind)


def require_role_on_disk(path: str | Path, role: str) -> None:
    """Refuse, before any model loads, a checkpoint not trained as `role` (captioner, filter)."""
    roles = roles_on_disk(path)
    if roles is not None and role not in roles:
        raise CheckpointError(f"{path}: a checkpoint trained as {', '.join(roles) or 'nothing'} cannot be the {role}; "
                              f"the {role} is a checkpoint whose roles (extra.json) include {role}")
