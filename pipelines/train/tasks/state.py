"""Checkpoint I/O of a task fine-tune; plain functions, no Ray.

A training checkpoint folder holds model/ (a task checkpoint: the MED, the task head and
extra.json's roles, model/tasks/checkpoint.py), train_state.pt (optimiser, scheduler, the head's
state, progress) and rng_rank{R}.pt, as pipelines/train/state.py writes them for the other jobs,
whose load_train_state and rng functions read these too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from model.tasks.checkpoint import save_task_checkpoint
from pipelines.train.state import MODEL_DIR, PROGRESS_FILE, STATE_FILE, Progress


def save_task_state(directory: Path, *, model, tokenizer, optimizer, scheduler, progress: Progress,
                    settings_json: dict) -> None:
    directory = Path(directory)
    save_task_checkpoint(directory / MODEL_DIR, model.med, tokenizer, model.task, model.head,
                         extra={"training": {"settings": settings_json, "progress": asdict(progress)}})
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "task": {k: v for k, v in model.state_dict().items() if not k.startswith("med.")},
        "progress": asdict(progress),
    }, directory / STATE_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)) + "\n")
