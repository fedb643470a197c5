"""The Ray Train worker loop of a task fine-tune: wiring only (the step, the batches and the
state I/O are plain functions in step.py, batches.py and state.py).

Every worker reads its split of the examples (text and image paths, as JSON) and reads the
images itself. On resume, each worker skips the batches of the current epoch that the
checkpoint counts as done, as the pre-training loop does.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.tasks.checkpoint import load_for, load_head
from pipelines.train.loop import _mean_over_ranks
from pipelines.train.metrics import MetricsLog, Throughput
from pipelines.train.optim import make_optimizer, make_scheduler
from pipelines.train.state import MODEL_DIR, Progress, load_rng, load_train_state, save_rng
from pipelines.train.step import to_device
from pipelines.train.tasks.settings import TaskFinetuneSettings
from pipelines.train.tasks.state import save_task_state
from pipelines.train.tasks.step import TaskModel, make_batch, task_step


def task_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    settings = TaskFinetuneSettings.model_validate(config["settings"])
    output = Path(config["output"])
    total_steps, steps_per_epoch = config["total_steps"], config["steps_per_epoch"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed + rank)

    resume = ray.train.get_checkpoint()
    resume_dir = None
    if resume is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="capfilt-task-resume-"))
        resume.to_directory(str(resume_dir))
    loaded = load_for(resume_dir / MODEL_DIR if resume_dir else config["init"], f"finetune:{settings.task}",
                      image_size=settings.image_size)
    model = TaskModel(settings.task, loaded.med, settings.label_smoothing)
    if model.head is not None:
        load_head(loaded, model.head)  # a same-task start or a resume; else the head's init
    model.to(device)
    tokenizer, med_config = loaded.tokenizer, loaded.med.config
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    scheduler = make_scheduler(optimizer, lr=settings.lr, min_lr=settings.min_lr, warmup_steps=settings.warmup_steps,
                               total_steps=total_steps, decay=settings.decay)
    progress = Progress()
    log = MetricsLog(output, echo=True) if rank == 0 else None
    generators: dict[str, torch.Generator] = {}  # save_rng still keeps torch's global state
    if resume_dir is not None:
        progress = load_train_state(resume_dir, task=model, optimizer=optimizer, scheduler=scheduler)
        load_rng(resume_dir, rank, generators)
        shutil.rmtree(resume_dir, ignore_errors=True)
        if log:
            log.write({"event": "resume", "step": progress.step, "epoch": progress.epoch,
                       "step_in_epoch": progress.step_in_epoch})
    module = ray.train.torch.prepare_model(
        model, move_to_device=False,
        # each task leaves part of the MED idle (NLVR2 and dialog the decoder, VQA the ITC heads)
        parallel_strategy_kwargs={"find_unused_parameters": True, "broadcast_buffers": False},
    )
    max_len = settings.max_text_len or med_config.max_text_len
    last_saved = progress.step

    def save(epoch_end: bool) -> None:
        nonlocal last_saved
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_task_state(Path(tmp), model=model, tokenizer=tokenizer, optimizer=optimizer,
                                scheduler=scheduler, progress=progress, settings_json=config["settings"])
            save_rng(Path(tmp), rank, generators)
            ray.train.report({"step": progress.step, "epoch": progress.epoch, "epoch_end": epoch_end},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{progress.step:08d}")
        last_saved = progress.step

    shard = ray.train.get_dataset_shard("train")
    meter = Throughput()
    for epoch in range(progress.epoch, settings.epochs):
        if progress.step >= total_steps:
            break
        batches = shard.iter_batches(batch_size=settings.batch_size, drop_last=True, batch_format="numpy",
                                     local_shuffle_buffer_size=1000,
                                     local_shuffle_seed=settings.seed * 1_000_003 + epoch * 1009 + rank)
        stopped = False
        for index, raw in enumerate(batches):
            if progress.step >= total_steps:
                stopped = True
                break
            if index < progress.step_in_epoch or index >= steps_per_epoch:
                continue
            rows = [json.loads(str(e)) for e in raw["example"]]
            # dialog's wrong candidates: drawn from a seed of (seed, rank, step), so that a resumed
            # job draws what it would have drawn, with no random state to checkpoint
            draws = random.Random(settings.seed * 1_000_003 + rank * 7919 + progress.step)
            batch = make_batch(settings.task, rows, tokenizer, med_config, max_len, draws)
            values = task_step(module, to_device(batch, device), optimizer, scheduler, settings.grad_clip)
            progress.step += 1
            progress.step_in_epoch += 1
            progress.samples += settings.batch_size * world
            meter.add(settings.batch_size * world)
            if progress.step % settings.log_every == 0 or progress.step == total_steps:
                values = _mean_over_ranks(values, device)
                if log:
                    log.write({"step": progress.step, "epoch": epoch, **values, "samples_per_s": meter.rate()})
            if progress.step % settings.checkpoint_every == 0 and progress.step < total_steps:
                save(epoch_end=False)
        if stopped:
            break
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        if log:
            log.write({"event": "epoch_end", "epoch": epoch, "step": progress.step, "samples": progress.samples})
        save(epoch_end=True)
    if last_saved != progress.step:
        save(epoch_end=False)
    if log:
        log.write({"event": "done", "step": progress.step, "samples": progress.samples, "world_size": world})
