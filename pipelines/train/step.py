"""One optimiser step, and the objects a training job is built from; plain functions, no Ray.

The loop (pipelines/train/loop.py) wraps `StepModule` in DDP, since DDP only synchronises
gradients of what runs through a module's `forward`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from model.med import MED
from model.pretrain_task import TrainingTask, ramped_alpha
from pipelines.train.settings import TrainSettings

# TrainSettings.task -> model/pretrain_task.py's kind
TASK_KINDS = {"pretrain": "pretrain", "caption": "captioner", "filter": "filter"}


def default_queue_size(med: MED) -> int:
    """BLIP's 57 600 for real models; a toy-sized queue for the tiny preset (a long queue of stale
    features from a fast-moving tiny model hurts more than it helps)."""
    return 57_600 if med.config.preset in ("base", "large") else 1024


def build_task(
    settings: TrainSettings, med: MED, tokenizer, gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> TrainingTask:
    """The task of `settings` over `med`; the training's dropout / drop-path flags, when given,
    replace the checkpoint's rates first (so the momentum encoders copy them too)."""
    med.set_regularisers(settings.text_dropout, settings.text_dropout, settings.vision_drop_path)
    prompt_length = len(tokenizer.encode_prompt(settings.prompt)) if settings.task == "caption" else 0
    queue = settings.queue_size if settings.queue_size is not None else default_queue_size(med)
    return TrainingTask(med, TASK_KINDS[settings.task], queue_size=max(1, queue),
                        prompt_length=prompt_length, label_smoothing=settings.label_smoothing, gather=gather,
                        positives=None if settings.positives == "auto" else settings.positives)


def caption_prefix(settings: TrainSettings) -> str:
    """The captioner learns to continue the prompt, as BLIP's caption fine-tune does."""
    return settings.prompt if settings.task == "caption" else ""


class StepModule(nn.Module):
    """`forward` = one task step, so that DDP sees it."""

    def __init__(self, task: TrainingTask):
        super().__init__()
        self.task = task

    def forward(self, batch: dict[str, torch.Tensor], alpha: float, generator: torch.Generator | None):
        return self.task.step(batch, alpha=alpha, generator=generator)


def alpha_for(step: int, steps_per_epoch: int) -> float:
    """BLIP ramps the distillation weight over the first two epochs."""
    return ramped_alpha(step, 2 * max(1, steps_per_epoch))


def optimizer_step(
    module: nn.Module,
    inputs: tuple,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    grad_clip: float | None = None,
    autocast_device: str | None = None,
) -> dict[str, float]:
    """Forward `module(*inputs)` (a dict of named losses, "loss" their sum), backward, clip, step,
    schedule. Returns the scalar losses and the step's lr as floats. Every training job's step,
    pre-training and the task fine-tunes (pipelines/train/tasks/step.py) alike.

    autocast_device: "cuda" for bf16 autocast on GPU; None keeps float32 (CPU)."""
    module.train()
    optimizer.zero_grad(set_to_none=True)
    cast = (torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_device
            else contextlib.nullcontext())
    with cast:
        losses = module(*inputs)
    losses["loss"].backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    out = {name: float(value.detach()) for name, value in losses.items() if value.numel() == 1}
    out["lr"] = float(lr)
    return out


def train_step(
    module: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    alpha: float,
    generator: torch.Generator | None = None,
    grad_clip: float | None = None,
    autocast_device: str | None = None,
) -> dict[str, float]:
    """One step of a `StepModule`: its losses and lr as floats (`optimizer_step`)."""
    return optimizer_step(module, (batch, alpha, generator), optimizer, scheduler,
                          grad_clip=grad_clip, autocast_device=autocast_device)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
