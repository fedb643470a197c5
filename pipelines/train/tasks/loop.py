"""The Ray Train worker loop of a task fine-tune: wiring only. The step, the batches and the state
I/O are plain functions in step.py, batches.py and state.py; seeding, resume and the step / log /
checkpoint cycle are pipelines/train/worker.py's, as for the pre-training loop.

Every worker reads its split of the examples (text and image paths, as JSON) and reads the
images itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from model.tasks.checkpoint import load_for, load_head
from pipelines.train.optim import optimizer_and_scheduler
from pipelines.train.step import to_device
from pipelines.train.tasks.settings import TaskFinetuneSettings
from pipelines.train.tasks.state import save_task_state
from pipelines.train.tasks.step import TaskModel, make_batch, task_step
from pipelines.train.worker import Batch, prepare_for_ranks, restore, run_epochs, start_worker

SHUFFLE_BUFFER = 1000  # examples are small JSON rows: a wide local shuffle costs little


def task_loop_per_worker(config: dict[str, Any]) -> None:
    settings = TaskFinetuneSettings.model_validate(config["settings"])
    run = start_worker(config, settings.seed)
    loaded = load_for(run.model_source, f"finetune:{settings.task}", image_size=settings.image_size)
    model = TaskModel(settings.task, loaded.med, settings.label_smoothing)
    if model.head is not None:
        load_head(loaded, model.head)  # a same-task start or a resume; else the head's init
    model.to(run.device)
    tokenizer, med_config = loaded.tokenizer, loaded.med.config
    optimizer, scheduler = optimizer_and_scheduler(model, settings, run.total_steps)
    generators: dict[str, torch.Generator] = {}  # save_rng still keeps torch's global state
    progress = restore(run, model=model, optimizer=optimizer, scheduler=scheduler, generators=generators)
    # each task leaves part of the MED idle (NLVR2 and dialog the decoder, VQA the ITC heads)
    module = prepare_for_ranks(model, find_unused_parameters=True)
    max_len = settings.max_text_len or med_config.max_text_len

    def step(raw: Batch) -> dict[str, float]:
        rows = [json.loads(str(e)) for e in raw["example"]]
        # dialog's wrong candidates: drawn from a seed of (seed, rank, step), so that a resumed
        # job draws what it would have drawn, with no random state to checkpoint
        draws = random.Random(settings.seed * 1_000_003 + run.rank * 7919 + progress.step)
        batch = make_batch(settings.task, rows, tokenizer, med_config, max_len, draws)
        return task_step(module, to_device(batch, run.device), optimizer, scheduler, settings.grad_clip)

    def save_state(directory: Path) -> None:
        save_task_state(directory, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                        progress=progress, settings_json=config["settings"])

    # one batch ahead is enough: a batch is a few JSON rows, `step` reads their images
    run_epochs(run, settings, progress, step=step, save_state=save_state, generators=generators,
               replicas=model, shuffle_buffer=SHUFFLE_BUFFER, prefetch_batches=1)
