"""A task fine-tune on the driver: check the data and the starting checkpoint, run the TorchTrainer.

`run_task_training(settings)` is what `capfilt finetune vqa|nlvr2|dialog` calls. The output
folder is laid out as the other training jobs' (pipelines/train/job.py): settings.json,
metrics.jsonl, ray/ (checkpoints; a job started again on the folder resumes) and model/, the
final task checkpoint that `capfilt evaluate --tasks TASK` takes.
"""

from __future__ import annotations

import json
from typing import Any

from model.tasks.checkpoint import load_for
from pipelines.train.data import DataError
from pipelines.train.job import ensure_ray, keep_final_model, make_trainer
from pipelines.train.metrics import read_metrics
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
    config = {"settings": settings_json, "output": str(settings.output.resolve()), "init": str(settings.init),
              "total_steps": total, "steps_per_epoch": per_epoch}
    result = make_trainer(settings, "pipelines.train.tasks.loop:task_loop_per_worker", config, dataset).fit()
    final = keep_final_model(result, settings.output)  # a task checkpoint names its roles itself
    done = [r for r in read_metrics(settings.output) if r.get("event") == "done"]
    return {"output": str(settings.output), "model": str(final), "task": settings.task,
            "examples": len(examples), "checkpoint": result.checkpoint.path,
            **({k: done[-1][k] for k in ("step", "samples", "world_size")} if done else {})}
