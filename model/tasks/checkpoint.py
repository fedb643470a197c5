"""Task checkpoints: a capfilt checkpoint folder (model/checkpoint.py) plus the task's own head.

    ...the MED's files...
    task_head.safetensors   the head's weights (NLVR2's twin cross-attention and classifier)
    extra.json              {"roles": [TASK], "task": TASK, ...}

The roles say what a checkpoint was trained for. A task loads only a checkpoint whose roles it
accepts, so an NLVR2 model is refused as a captioner (and a captioner as an NLVR2 model) with a
message, instead of loading because the shapes happen to match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.weights_io import CheckpointError, assign_state, unique_state

HEAD_FILE = "task_head.safetensors"

# What each use of a checkpoint accepts as a starting point or as the model it runs.
# "captioner" and "filter" are the pre-trained / CapFilt roles (pre-training writes both).
ACCEPTS: dict[str, tuple[str, ...]] = {
    # fine-tunes start from a pre-trained model (or resume their own kind)
    "finetune:vqa": ("captioner", "filter", "vqa"),
    "finetune:nlvr2": ("captioner", "filter", "nlvr2"),
    "finetune:dialog": ("captioner", "filter", "dialog"),
    # evaluation runs the fine-tuned kind itself; the zero-shot transfers run the model that
    # BLIP transfers: the retrieval (filter) model to text-video retrieval, the VQA model to video QA
    "evaluate:vqa": ("vqa",),
    "evaluate:nlvr2": ("nlvr2",),
    "evaluate:dialog": ("dialog",),
    "evaluate:video_retrieval": ("filter",),
    "evaluate:video_qa": ("vqa",),
    "evaluate:retrieval": ("filter",),
    "evaluate:caption": ("captioner",),
}
TASK_ROLES = ("vqa", "nlvr2", "dialog")


def require_role(checkpoint: Checkpoint, use: str) -> None:
    """Refuse a checkpoint whose roles do not fit `use` (a key of ACCEPTS)."""
    accepted = ACCEPTS[use]
    if not set(checkpoint.roles) & set(accepted):
        what = use.replace(":", " ")
        raise CheckpointError(
            f"{checkpoint.path}: a checkpoint trained as {', '.join(checkpoint.roles) or 'nothing'} "
            f"cannot be used to {what}; that takes a checkpoint whose roles include one of: {', '.join(accepted)} "
            f"(extra.json 'roles')")


def load_for(path: str | Path, use: str, *, image_size: int | None = None, device: str = "cpu") -> Checkpoint:
    checkpoint = load_checkpoint(path, device=device, image_size=image_size)
    require_role(checkpoint, use)
    return checkpoint


def save_task_checkpoint(
    directory: str | Path, med: nn.Module, tokenizer, task: str, head: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    if task not in TASK_ROLES:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASK_ROLES)}")
    directory = save_checkpoint(directory, med, tokenizer, extra={**(extra or {}), "roles": [task], "task": task})
    if head is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in unique_state(head).items()}
        save_file(state, str(Path(directory) / HEAD_FILE), metadata={"task": task})
    return directory


def load_head(checkpoint: Checkpoint, head: nn.Module) -> bool:
    """Fill `head` from the checkpoint's task_head.safetensors, strictly; False when the
    checkpoint has none (a fine-tune starting from a pre-trained model: the head keeps its init)."""
    path = Path(checkpoint.path) / HEAD_FILE
    if not path.is_file():
        if checkpoint.extra.get("task") in TASK_ROLES and any(True for _ in head.parameters()):
            raise CheckpointError(f"{checkpoint.path}: a {checkpoint.extra['task']} checkpoint without its {HEAD_FILE}")
        return False
    assign_state(head, load_file(str(path)), str(path))
    return True


@torch.no_grad()
def untie_decoder(med) -> None:
    """Give the decoder its own copies of the modules it shares with the encoder. BLIP's
    fine-tuned VQA model has a separate encoder and decoder (initialised from the tied
    pre-trained ones): the decoder's cross-attention reads the question's states, the encoder's
    the image's."""
    import copy

    if not med.tied:
        return
    enc, dec = med.text_encoder, med.text_decoder.bert
    dec.embeddings = copy.deepcopy(enc.embeddings)
    for e, d in zip(enc.encoder.layer, dec.encoder.layer):
        d.crossattention = copy.deepcopy(e.crossattention)
        d.intermediate = copy.deepcopy(e.intermediate)
        d.output = copy.deepcopy(e.output)
    med.text_decoder.cls.predictions.decoder.weight = dec.embeddings.word_embeddings.weight
    med.tied = False
