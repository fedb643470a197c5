"""The Ray Train worker loop of pre-training and the caption / filter fine-tunes: wiring only. The
step, the schedule, augmentation and checkpoint I/O are plain functions in step.py, optim.py,
augment.py and state.py; seeding, resume and the step / log / checkpoint cycle are worker.py's,
which the task fine-tunes share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipelines.train.augment import collate
from pipelines.train.optim import optimizer_and_scheduler
from pipelines.train.ranks import gather_from_ranks
from pipelines.train.settings import TrainSettings
from pipelines.train.state import save_train_state
from pipelines.train.step import StepModule, alpha_for, build_task, caption_prefix, to_device, train_step
from pipelines.train.worker import Batch, prepare_for_ranks, restore, run_epochs, start_worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from model.checkpoint import load_checkpoint

    settings = TrainSettings.model_validate(config["settings"])
    run = start_worker(config, settings.seed)
    device = run.device
    loaded = load_checkpoint(run.model_source, image_size=settings.image_size)
    med, tokenizer = loaded.med, loaded.tokenizer
    task = build_task(settings, med, tokenizer, gather=gather_from_ranks).to(device)
    optimizer, scheduler = optimizer_and_scheduler(task, settings, run.total_steps)
    generators = {"augment": torch.Generator().manual_seed(settings.seed * 1000 + run.rank),
                  "negatives": torch.Generator(device=device).manual_seed(settings.seed * 1000 + 500 + run.rank)}
    progress = restore(run, model=task, optimizer=optimizer, scheduler=scheduler, generators=generators)
    # captioner and filter fine-tunes leave part of the MED idle
    module = prepare_for_ranks(StepModule(task), find_unused_parameters=settings.task != "pretrain")
    autocast = "cuda" if settings.use_gpu and device.type == "cuda" else None
    prefix = caption_prefix(settings)
    max_len = settings.max_text_len or med.config.max_text_len

    def step(raw: Batch) -> dict[str, float]:
        batch = collate(raw, config=med.config, tokenizer=tokenizer, max_text_len=max_len,
                        generator=generators["augment"], crop_scale_min=settings.crop_scale_min, prefix=prefix,
                        caption_max_words=settings.caption_max_words if settings.pre_caption else None)
        return train_step(module, to_device(batch, device), optimizer, scheduler,
                          alpha=alpha_for(progress.step, run.steps_per_epoch), generator=generators["negatives"],
                          grad_clip=settings.grad_clip, autocast_device=autocast)

    def save_state(directory: Path) -> None:
        save_train_state(directory, task=task, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                         progress=progress, settings_json=config["settings"])

    run_epochs(run, settings, progress, step=step, save_state=save_state, generators=generators,
               replicas=task.med, shuffle_buffer=settings.shuffle_buffer, prefetch_batches=2)
