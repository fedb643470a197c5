"""A task fine-tune on the driver: check the data and the starting checkpoint, run the TorchTrainer.

`run_task_training(settings)` is what `capfilt finetune vqa|nlvr2|dialog` calls. The output
folder is laid out as the other training jobs' (pipelines/train/job.py): settings.json,
metrics.jsonl, ray/ (checkpoints; a job started again on the folder resumes) and model/, the
final task checkpoint that `capfilt evaluate --tasks TASK` takes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from model.tasks.checkpoint import load_for
from pipelines.train.data import DataError
from pipelines.train.job import RUN_NAME, ensure_ray
from pipelines.train.metrics import read_metrics
from pipelines.train.state import MODEL_DIR
from pipelines.train.tasks.data import dialog_rounds, read_task
from pipelines.train.tasks.settings import TaskFinetuneSettings


def training_examples(settings: TaskFinetuneSettings) -> list[dict[str, Any]]:
    """The split's checked examples (DataError naming the file and row of a bad one)."""
    rows = read_task(settings.task, settings.data, settings.split)
    if settings.task == "dialog":
        rows = dialog_rounds(rows)
    return rows[: settings.max_examples] if settings.max_examples else rows


def run_task_training(settings: TaskFinetuneSettings) -> dict[str, Any]:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.train.tasks.loop import task_loop_per_worker

    examples = training_examples(settings)
    load_for(settings.init, f"finetune:{settings.task}")  # a checkpoint of the wrong kind stops here
    per_step = settings.batch_size * settings.num_workers
    if len(examples) < per_step:
        raise DataError(f"data: {len(examples)} {settings.task} examples in split '{settings.split}' is less than one "
                        f"step needs (batch_size {settings.batch_size} x num_workers {settings.num_workers})")
    per_epoch = len(examples) // per_step
    total = per_epoch * settings.epochs
    if settings.max_steps:
        total = min(total, settings.max_steps)
    ensure_ray(settings)
    settings.output.mkdir(parents=True, exist_ok=True)
    settings_json = settings.model_dump(mode="json")
    (settings.output / "settings.json").write_text(json.dumps(settings_json, indent=2) + "\n")
    dataset = ray.data.from_items([{"example": json.dumps(e)} for e in examples])
    trainer = TorchTrainer(
        task_loop_per_worker,
        train_loop_config={"settings": settings_json, "output": str(settings.output.resolve()),
                           "init": str(settings.init), "total_steps": total, "steps_per_epoch": per_epoch},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker, **({"GPU": 1} if settings.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            storage_path=str(settings.output.resolve()), name=RUN_NAME,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints)),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training in {settings.output} ended without a checkpoint")
    final = settings.output / MODEL_DIR
    with result.checkpoint.as_directory() as directory:
        tmp = settings.output / f".{MODEL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(directory) / MODEL_DIR, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    done = [r for r in read_metrics(settings.output) if r.get("event") == "done"]
    return {"output": str(settings.output), "model": str(final), "task": settings.task,
            "examples": len(examples), "checkpoint": result.checkpoint.path,
            **({k: done[-1][k] for k in ("step", "samples", "world_size")} if done else {})}
