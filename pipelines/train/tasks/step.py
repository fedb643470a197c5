"""What a downstream fine-tune trains: the MED plus the task's head, as one module whose
`forward(batch)` returns the task's losses (DDP synchronises what runs through `forward`).
Plain torch, no Ray: the Ray Train loop and the tests build it alike."""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch import nn

from model.med import MED
from model.tasks.dialog import dialog_loss
from model.tasks.nlvr import NLVRHead, nlvr_loss
from model.tasks.vqa import check_widths, vqa_loss
from model.tasks.checkpoint import untie_decoder
from pipelines.train.step import optimizer_step
from pipelines.train.tasks.batches import dialog_batch, nlvr_batch, vqa_batch

FINETUNE_TASKS = ("vqa", "nlvr2", "dialog")
DIALOG_NEGATIVES = 3  # wrong candidates per round per step, beside the true answer


class TaskModel(nn.Module):
    def __init__(self, task: str, med: MED, label_smoothing: float = 0.1):
        super().__init__()
        if task not in FINETUNE_TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(FINETUNE_TASKS)}")
        self.task, self.label_smoothing = task, label_smoothing
        if task == "vqa":
            check_widths(med)
            untie_decoder(med)  # BLIP's VQA model: encoder and decoder apart
        self.med = med
        self.head = NLVRHead(med) if task == "nlvr2" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = batch
        if self.task == "vqa":
            return vqa_loss(self.med, b["pixel_values"], b["q_ids"], b["q_mask"], b["a_ids"], b["a_mask"],
                            b["owner"], b["weights"], self.label_smoothing)
        if self.task == "nlvr2":
            return nlvr_loss(self.med, self.head, b["pixel_left"], b["pixel_right"], b["ids"], b["mask"], b["labels"])
        return dialog_loss(self.med, b["pixel_values"], b["c_ids"], b["c_mask"], b["ids"], b["mask"],
                           b["owner"], b["labels"])


def make_batch(task: str, rows: Sequence[dict[str, Any]], tokenizer, config, max_len: int,
               rng: random.Random) -> dict[str, torch.Tensor]:
    if task == "vqa":
        return vqa_batch(rows, tokenizer, config, max_len)
    if task == "nlvr2":
        return nlvr_batch(rows, tokenizer, config, max_len)
    return dialog_batch(rows, tokenizer, config, max_len, DIALOG_NEGATIVES, rng)


def task_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer, scheduler,
              grad_clip: float | None = None) -> dict[str, float]:
    """One step of a `TaskModel`, in float32 (the task fine-tunes take no autocast)."""
    return optimizer_step(model, (batch,), optimizer, scheduler, grad_clip=grad_clip)
