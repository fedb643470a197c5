"""A checkpoint reference -> files on this machine.

What `--captioner`, `--filter`, `--init` and `capfilt model info` take, tried in this order:
  1. a local folder or `.pth` file that exists (a local path always wins, as in transformers);
  2. a released-weights preset (model/released.py), e.g. `blip-large`, `blip-itm-large`;
  3. a hub model `org/name` or `org/name@revision` (branch, tag or commit), through
     huggingface_hub: its cache (HF_HUB_CACHE / HF_HOME), and no network when HF_HUB_OFFLINE=1.

A hub name resolves to one commit; `pinned` names it (`org/name@<sha>`), so that a manifest says
exactly which weights ran and a resumed run, or a worker on another node, loads the same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.released import RELEASED, ReleasedWeights
from model.checkpoint_error import CheckpointError

# Files a checkpoint needs: config, tokenizer, weights (safetensors first; .bin / .pth only when
# a repo has no safetensors, so that a repo holding all three formats is fetched once).
_CONFIG_PATTERNS = ["*.json", "*.txt"]
_WEIGHT_FALLBACK = ["pytorch_model.bin", "*.pth"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                    "added_tokens.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    reference: str               # as given
    path: Path                   # a local folder, or a .pth file
    repo_id: str | None = None   # the hub repo it came from
    revision: str | None = None  # the commit that repo's name resolved to
    preset: str | None = None    # the released-weights preset it came from
    url: str | None = None       # a .pth preset's source

    @property
    def pinned(self) -> str:
        """A reference that gives these same files again, on any machine with the cache or the hub."""
        if self.repo_id is not None and self.revision is not None:
            return f"{self.repo_id}@{self.revision}"
        return self.preset or self.reference

    def record(self) -> dict[str, Any]:
        """For a manifest: where the weights came from (the hash says what they are)."""
        return {"reference": self.reference, "pinned": self.pinned, "repo_id": self.repo_id,
                "revision": self.revision, "preset": self.preset, "url": self.url, "path": str(self.path)}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _hub_cache() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None  # None: huggingface_hub's default (HF_HOME)


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      cache_dir=_hub_cache(), local_files_only=offline))
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(
            f"{what}: {repo_id}{'@' + revision if revision else ''} is not in the hub cache "
            f"({_hub_cache() or 'huggingface_hub default'}) and {where}") from None
    except (HFValidationError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"{what}: hub model {repo_id!r}: {type(exc).__name__}: {exc}") from None


def resolve_hub(reference: str) -> ResolvedCheckpoint:
    """`org/name[@revision]` -> the snapshot folder of the commit it names."""
    repo_id, _, revision = reference.partition("@")
    what = f"checkpoint {reference!r} (no such local path; tried as a hub name)"
    folder = _snapshot(repo_id, revision or None, [*_CONFIG_PATTERNS, "*.safetensors"], what)
    if not any(folder.glob("*.safetensors")) and not hub_offline():
        folder = _snapshot(repo_id, revision or None, [*_CONFIG_PATTERNS, *_WEIGHT_FALLBACK], what)
    return ResolvedCheckpoint(reference=reference, path=folder, repo_id=repo_id, revision=folder.name)


def pth_cache() -> Path:
    """Where released `.pth` files go: beside torch.hub's (TORCH_HOME), as BLIP's own code puts them."""
    import torch

    return Path(torch.hub.get_dir()) / "capfilt"


def _fetch(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(tmp, target)  # a reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_released(weights: ReleasedWeights) -> ResolvedCheckpoint:
    if not weights.is_pth:
        hub = resolve_hub(weights.source)
        return ResolvedCheckpoint(reference=weights.name, path=hub.path, repo_id=hub.repo_id,
                                  revision=hub.revision, preset=weights.name)
    folder = pth_cache() / weights.name
    pth = folder / weights.source.rsplit("/", 1)[-1]
    what = f"preset {weights.name!r}"
    if not pth.is_file():
        if hub_offline():
            raise CheckpointError(f"{what}: {pth} is missing and HF_HUB_OFFLINE is set; fetch {weights.source} there")
        try:
            _fetch(weights.source, pth)
        except OSError as exc:
            raise CheckpointError(f"{what}: could not fetch {weights.source}: {exc}") from None
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        assert weights.tokenizer_from is not None, weights.name
        source = _snapshot(weights.tokenizer_from, None, list(_TOKENIZER_FILES), f"{what} (its tokenizer)")
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)  # follows the cache's symlinks
    return ResolvedCheckpoint(reference=weights.name, path=pth, preset=weights.name, url=weights.source)


def resolve_checkpoint(reference: str | os.PathLike) -> ResolvedCheckpoint:
    """A local path, a released preset or a hub name -> local files; a clear error naming the
    reference when it is none of them."""
    text = os.fspath(reference)
    path = Path(text).expanduser()
    if path.exists():
        return ResolvedCheckpoint(reference=text, path=path)
    if text in RELEASED:
        return resolve_released(RELEASED[text])
    if _HUB_NAME.match(text):
        return resolve_hub(text)
    raise CheckpointError(
        f"{text}: not a checkpoint directory or .pth file (no such path), not a released preset ({', '.join(RELEASED)}), "
        "and not a hub name (org/name or org/name@revision)")


def looks_resolvable(reference: str | os.PathLike) -> bool:
    """Cheap check for settings validation: an existing path, a preset name, or hub-name syntax
    (whether the hub has it is found out when the job loads it)."""
    text = os.fspath(reference)
    return Path(text).expanduser().exists() or text in RELEASED or bool(_HUB_NAME.match(text))
