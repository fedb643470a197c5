"""Supervised warm-up of a MED's ViT on labelled pictures, before any image-text training.

BLIP never trains its ViT from scratch: it starts from ImageNet weights. This is the same idea for
models that have no such weights (the tiny preset, the toy world): linear heads on the ViT's
patch tokens learn per-patch labels, a linear head on [CLS] learns which labels a picture holds,
and then the heads are thrown away, as an ImageNet classifier's head is. Only the ViT changes.

The loop knows nothing of what the labels mean. A batch is any object with
  images  (B, S, S, 3) uint8,
  patch   {name: (B, patches) int64}, where class `classes[name]` means "no label here",
  objects (B, patches) int64, 0 or the id of the object a patch belongs to (for per-object votes),
  present (B, P) float32 multi-hot.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.med import MED
from pipelines.progress import Progress
from pipelines.train.augment import normalise
from pipelines.train.optim import lr_at, make_optimizer


class WarmupHeads(nn.Module):
    """One linear head per patch label (classes + background) and one multi-label head on [CLS]."""

    def __init__(self, width: int, patch_classes: dict[str, int], present_classes: int):
        super().__init__()
        self.patch = nn.ModuleDict({name: nn.Linear(width, n + 1) for name, n in patch_classes.items()})
        self.present = nn.Linear(width, present_classes)

    def forward(self, hidden: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        tokens = hidden[:, 1:]
        return {name: head(tokens) for name, head in self.patch.items()}, self.present(hidden[:, 0])


def _tensors(batch: Any, med: MED, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    pixels = normalise(torch.from_numpy(batch.images), med.config).to(device)
    patch = {k: torch.from_numpy(v).to(device) for k, v in batch.patch.items()}
    return pixels, patch, torch.from_numpy(batch.objects).to(device), torch.from_numpy(batch.present).to(device)


def warmup_loss(med: MED, heads: WarmupHeads, batch: Any, device: torch.device) -> torch.Tensor:
    """Sum over patch labels of their cross-entropy (every patch, background included), plus the
    [CLS] head's binary cross-entropy."""
    pixels, patch, _, present = _tensors(batch, med, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = med.vision(pixel_values=pixels).last_hidden_state
        logits, present_logits = heads(hidden)
    loss = F.binary_cross_entropy_with_logits(present_logits.float(), present)
    for name, target in patch.items():
        loss = loss + F.cross_entropy(logits[name].float().flatten(0, 1), target.flatten())
    return loss


@torch.no_grad()
def warmup_scores(med: MED, heads: WarmupHeads, batch: Any, device: torch.device) -> dict[str, float]:
    """On a held-out batch: for each patch label, accuracy over the patches an object covers, and
    per object (its patches' log-probabilities summed, background left out); and the share of
    pictures whose [CLS] multi-label is exactly right."""
    was_training = med.vision.training
    med.vision.eval()
    heads.eval()
    pixels, patch, objects, present = _tensors(batch, med, device)
    logits, present_logits = heads(med.vision(pixel_values=pixels).last_hidden_state)
    med.vision.train(was_training)
    heads.train(was_training)
    scores: dict[str, float] = {}
    covered = objects > 0
    for name, target in patch.items():
        log_probs = logits[name].float().log_softmax(-1)[..., :-1]  # background left out
        scores[f"patch_{name}"] = (log_probs.argmax(-1) == target)[covered].float().mean().item()
        right = total = 0
        for b in range(len(objects)):
            for k in objects[b].unique().tolist():
                if k == 0:
                    continue
                own = objects[b] == k
                right += int(log_probs[b][own].sum(0).argmax().item() == target[b][own][0].item())
                total += 1
        scores[f"object_{name}"] = right / max(1, total)
    scores["present_exact"] = ((present_logits > 0).float() == present).all(1).float().mean().item()
    return {k: round(v, 4) for k, v in scores.items()}


def warm_up_vision(
    med: MED,
    batch_at: Callable[[int], Any],
    *,
    patch_classes: dict[str, int],
    present_classes: int,
    steps: int,
    lr: float = 1e-3,
    min_lr: float = 1e-5,
    warmup_steps: int = 100,
    weight_decay: float = 0.05,
    device: str = "cpu",
    eval_batch: Any = None,
    eval_every: int = 500,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] = lambda entry: None,
    progress_log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `med.vision` for `steps` steps on `batch_at(step)`; returns (and logs) an entry each
    `eval_every` steps and at the end: step, loss, lr, seconds, and the held-out scores. Progress
    lines (steps done / total, rate, ETA) go to `progress_log`, or to stderr (pipelines/progress.py)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    med.to(dev)
    med.vision.train()
    heads = WarmupHeads(med.config.vision_width, patch_classes, present_classes).to(dev)
    optimizer = make_optimizer(nn.ModuleList([med.vision, heads]), lr, weight_decay)
    curve: list[dict[str, Any]] = []
    started = time.perf_counter()
    progress = Progress("warm-up", steps, "steps", log=progress_log)
    for step in range(steps):
        rate = lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=steps, decay="cosine")
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = warmup_loss(med, heads, batch_at(step), dev)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        progress.update(1)
        if done % eval_every == 0 or done == steps:
            entry: dict[str, Any] = {"step": done, "loss": round(float(loss.detach()), 4), "lr": rate,
                                     "seconds": round(time.perf_counter() - started, 1)}
            if eval_batch is not None:
                entry.update(warmup_scores(med, heads, eval_batch, dev))
            curve.append(entry)
            log(entry)
    progress.close()
    med.vision.eval()
    return curve
