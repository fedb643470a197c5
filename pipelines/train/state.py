"""Checkpoint I/O of a training job; plain functions, no Ray.

A training checkpoint folder holds:
  model/               the MED and its tokenizer, written by model.checkpoint.save_checkpoint, so
                       that `capfilt bootstrap --captioner/--filter` and `capfilt evaluate` take it
  train_state.pt       rank 0: optimiser, scheduler, the task's non-MED state (momentum encoders
                       and queues), progress (epoch, step, step in epoch, samples)
  rng_rank{R}.pt       each rank's random state (global torch, augmentation and negative-sampling
                       generators); Ray Train merges the ranks' folders into one
Everything is read with `torch.load(weights_only=True)`: tensors, numbers, strings, dicts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"


@dataclass
class Progress:
    epoch: int = 0  # epochs fully done
    step: int = 0  # optimiser steps done in all
    step_in_epoch: int = 0  # batches of the current epoch done (each worker's, equal across workers)
    samples: int = 0  # pairs trained on, all workers together


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def _non_med_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """The task's state that the model folder does not hold (momentum encoders, queues)."""
    return {k: v for k, v in task.state_dict().items() if not k.startswith("med.")}


def save_train_state(
    directory: Path,
    *,
    task: nn.Module,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    progress: Progress,
    settings_json: dict,
) -> None:
    """Rank 0's part of a checkpoint."""
    from model.checkpoint import save_checkpoint

    directory = Path(directory)
    save_checkpoint(directory / MODEL_DIR, task.med, tokenizer,
                    extra={"training": {"settings": settings_json, "progress": asdict(progress)}})
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "task": _non_med_state(task),
        "progress": asdict(progress),
    }, directory / STATE_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)) + "\n")


def save_rng(directory: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    state.update({name: g.get_state() for name, g in generators.items()})
    torch.save(state, Path(directory) / rng_file(rank))


def load_train_state(
    directory: Path, *, task: nn.Module, optimizer: torch.optim.Optimizer, scheduler
) -> Progress:
    """Put a checkpoint's optimiser, scheduler and non-MED task state in place (the MED itself is
    loaded from `directory/model` by the caller, before the optimiser is built)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    missing, unexpected = task.load_state_dict(state["task"], strict=False)
    missing = [k for k in missing if not k.startswith("med.")]
    if missing or unexpected:
        raise ValueError(f"{directory / STATE_FILE}: task state does not fit: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(**state["progress"])


def load_rng(directory: Path, rank: int, generators: dict[str, torch.Generator]) -> bool:
    """Restore this rank's random state; False when the checkpoint has none for it (the job
    resumed with more workers than it saved), and the caller's fresh seeds stand."""
    path = Path(directory) / rng_file(rank)
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, g in generators.items():
        if name in state:
            g.set_state(state[name])
    return True


def read_progress(directory: Path) -> Progress | None:
    path = Path(directory) / PROGRESS_FILE
    return Progress(**json.loads(path.read_text())) if path.is_file() else None
