"""AdamW with BLIP's weight decay, and the learning-rate schedule: linear warm-up, then decay.

Plain functions, no Ray: the loop calls them, the tests call them directly.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol

import torch
from torch import nn

# Names whose parameters take no weight decay: biases, norms, embeddings' norms and ITC's
# temperature (decaying it towards 0 would sharpen the softmax for no reason).
NO_DECAY_MARKERS = ("bias", "norm", "layernorm", "layer_norm", "temp")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and the parameters listed in NO_DECAY_MARKERS.

    Only trainable parameters, each shared tensor once (the MED's decoder shares the encoder's)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, param in module.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lowered = name.lower()
        if param.ndim < 2 or any(marker in lowered for marker in NO_DECAY_MARKERS):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(module: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(module, weight_decay), lr=lr, betas=(0.9, 0.999))


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int, decay: str) -> float:
    """Learning rate for optimiser step `step` (0-based).

    Warm-up rises linearly from min_lr to lr over `warmup_steps`; then `decay` brings it from lr to
    min_lr at `total_steps` (cosine or linear), or holds it (constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return min_lr + (lr - min_lr) * step / warmup_steps
    if decay == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if decay == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown decay {decay!r}; known: cosine, linear, constant")


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int, decay: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_at`, so that its state_dict (the step count) resumes with the job.

    The optimiser's base lr must be `lr`; the lambda returns the factor."""
    def factor(step: int) -> float:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                     total_steps=total_steps, decay=decay) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ScheduleSettings(Protocol):
    """The fields every training job's settings carry for its optimiser and schedule."""

    lr: float
    min_lr: float
    warmup_steps: int
    decay: str
    weight_decay: float


def optimizer_and_scheduler(
    module: nn.Module, settings: ScheduleSettings, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `module` and its schedule to `total_steps`, as every training job builds them."""
    optimizer = make_optimizer(module, settings.lr, settings.weight_decay)
    scheduler = make_scheduler(optimizer, lr=settings.lr, min_lr=settings.min_lr, warmup_steps=settings.warmup_steps,
                               total_steps=total_steps, decay=settings.decay)
    return optimizer, scheduler


def total_steps(num_pairs: int, batch_size: int, world_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimiser steps of a job: every worker takes the same number of full batches per epoch."""
    per_epoch = steps_per_epoch(num_pairs, batch_size, world_size)
    steps = per_epoch * epochs
    return min(steps, max_steps) if max_steps else steps


def steps_per_epoch(num_pairs: int, batch_size: int, world_size: int) -> int:
    return num_pairs // (batch_size * world_size)


def grad_norm(params: Iterable[nn.Parameter]) -> float:
    norms = [p.grad.detach().norm(2) for p in params if p.grad is not None]
    return float(torch.norm(torch.stack(norms), 2)) if norms else 0.0
