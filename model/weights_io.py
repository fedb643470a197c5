"""Reading weight files safely and putting them into a MED strictly.

Never unpickles arbitrary objects: safetensors, or `torch.load(weights_only=True)` for `.pth` /
`.bin`. A truncated safetensors file is caught before it is opened, and the error names the
first tensor whose bytes are missing. `assign_state` is the one place a state dict enters a
module: every missing, unexpected or mis-shaped key is listed, never silently dropped.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from model.checkpoint_error import CheckpointError


def _check_safetensors_complete(path: Path) -> None:
    """Header length + JSON header + data; every tensor's byte range must lie inside the file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated safetensors header ({size} bytes, header needs {8 + header_len})")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
    available = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > available:
            raise CheckpointError(
                f"{path}: truncated: tensor '{name}' needs bytes {start}..{end} of the data section, "
                f"only {available} present"
            )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    _check_safetensors_complete(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors: {exc}") from None
    return out


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A `.pth`/`.bin` state dict, unpickled with weights_only=True. BLIP's own files wrap it as
    {'model': state_dict, 'optimizer': ..., 'config': ..., 'epoch': ...}; only 'model' is used."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot load with weights_only=True (truncated, or holds objects other than "
            f"tensors, which capfilt refuses to unpickle): {exc}"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return dict(obj)


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a transformers folder: model.safetensors, its sharded index, or
    pytorch_model.bin. Returns (state, the file name(s) for messages)."""
    directory = Path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single), str(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(directory / shard))
        return state, str(index)
    if (directory / "pytorch_model.bin").is_file():
        return read_torch_file(directory / "pytorch_model.bin"), str(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _groups(module: nn.Module) -> dict[int, list[str]]:
    """State-dict names grouped by the tensor object they point at (shared modules alias)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return groups


def unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once, under its first name (what is saved)."""
    full = module.state_dict()
    return {names[0]: full[names[0]].detach().contiguous() for names in _groups(module).values()}


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more


def assign_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    *,
    allow_missing: tuple[str, ...] = (),
    adopt: bool = False,
) -> list[str]:
    """Copy `state` into `module`, strictly.

    adopt=True: a tensor of `state` with the parameter's dtype, device and layout becomes the
    parameter's storage instead of being copied into it, which saves a pass over every weight byte
    (~1.5 s of a BLIP-base fp32 load on a 2-core machine: first touches of fresh memory and the
    copy). Read from safetensors, such a tensor is a private (copy-on-write) map of the file. A
    storage already adopted by another parameter is copied, so no two parameters the module keeps
    apart come to share memory.

    Every tensor group of the module must be given under at least one of its names (unless a name
    starts with a prefix in `allow_missing`: those keep their init and are returned). Where a
    file gives several names of one shared tensor, they must be equal. Any unexpected key, missing
    key or shape mismatch fails with one message that lists them all and names `source`.
    """
    targets = module.state_dict(keep_vars=True)
    unexpected = sorted(k for k in state if k not in targets)
    missing: list[str] = []
    left_at_init: list[str] = []
    problems: list[str] = []
    for names in _groups(module).values():
        given = [n for n in names if n in state]
        if not given:
            if any(n.startswith(allow_missing) for n in names) and allow_missing:
                left_at_init.append(names[0])
            else:
                missing.append(names[0])
            continue
        expected = tuple(targets[names[0]].shape)
        for n in given:
            if tuple(state[n].shape) != expected:
                problems.append(f"'{n}' has shape {tuple(state[n].shape)} in the file, the model expects {expected}")
        first = state[given[0]]
        for n in given[1:]:
            if state[n].shape == first.shape and not torch.equal(state[n], first):
                problems.append(f"'{n}' and '{given[0]}' are one shared tensor in the model but differ in the file")
    if unexpected or missing or problems:
        parts = [f"{source}: cannot load strictly"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if problems:
            parts.append(_listing("mismatched tensors", problems))
        raise CheckpointError("; ".join(parts))
    adopted: set[int] = set()  # storages that became a parameter's
    with torch.no_grad():
        for names in _groups(module).values():
            given = [n for n in names if n in state]
            if not given:
                continue
            target, source = targets[names[0]], state[given[0]]
            storage = source.untyped_storage()
            if (adopt and source.dtype == target.dtype and source.device == target.device and source.is_contiguous()
                    and source.storage_offset() == 0 and storage.nbytes() == source.numel() * source.element_size()
                    and storage.data_ptr() not in adopted):
                adopted.add(storage.data_ptr())
                target.data = source  # the Parameter object stays: ties and shared modules keep it
            else:
                target.copy_(source.to(target.dtype))
    return sorted(left_at_init)


def resize_position_embedding(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + new_grid^2, D): [CLS] kept, the patch grid resized bicubically
    (how BLIP moves a 224-px pre-trained ViT to 384 px for fine-tuning)."""
    cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
    old_grid = math.isqrt(grid_pos.shape[1])
    if old_grid * old_grid != grid_pos.shape[1]:
        raise CheckpointError(f"position embedding of {grid_pos.shape[1]} patches is not a square grid")
    if old_grid == new_grid:
        return pos
    dim = pos.shape[-1]
    grid = grid_pos.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos.dtype)
    return torch.cat([cls_pos, grid], dim=1)
