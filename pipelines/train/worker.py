"""The Ray Train worker plumbing that every training job shares: pre-training and the caption /
filter fine-tunes (loop.py) and the downstream task fine-tunes (tasks/loop.py). A loop builds its
model and its step; this module seeds the worker, resumes from Ray's checkpoint, and runs the
step / log / checkpoint cycle over the epochs. One copy, so that the jobs cannot come to disagree
on what a checkpoint holds or where a resumed job goes on.

Data position on resume: every worker skips the batches of the current epoch that the checkpoint
counts as done (`Progress.step_in_epoch`), so no optimiser step is taken twice. Ray Data's
streaming split hands blocks to workers as they ask, so the skipped batches are the same number
of examples, not necessarily the same examples, as those trained before the failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn

from pipelines.progress import Progress as ProgressLine
from pipelines.train.metrics import MetricsLog, Throughput
from pipelines.train.ranks import mean_over_ranks, replicas_equal
from pipelines.train.state import MODEL_DIR, Progress, load_rng, load_train_state, save_rng

FAULT_MARKER = ".fault_injected"

Batch = dict[str, np.ndarray]


class CycleSettings(Protocol):
    """The fields every training job's settings carry for the cycle."""

    task: str
    seed: int
    epochs: int
    batch_size: int
    log_every: int
    checkpoint_every: int


@dataclass
class WorkerRun:
    """One worker's place in the job, as `start_worker` finds it."""

    config: dict[str, Any]  # the train_loop_config the job's driver wrote
    output: Path
    rank: int
    world: int
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    resume_dir: Path | None  # Ray's checkpoint of a restarted job, copied here; None on a fresh start
    log: MetricsLog | None  # rank 0's; the other ranks write no metrics

    @property
    def model_source(self) -> Path | str:
        """The checkpoint being resumed, else the job's starting model."""
        return self.resume_dir / MODEL_DIR if self.resume_dir else self.config["init"]


def start_worker(config: dict[str, Any], seed: int) -> WorkerRun:
    """Seed this worker's torch and copy out the checkpoint that Ray hands a restarted job."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(seed + rank)
    resume = ray.train.get_checkpoint()
    resume_dir = None
    if resume is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="capfilt-resume-"))
        resume.to_directory(str(resume_dir))
    output = Path(config["output"])
    return WorkerRun(config=config, output=output, rank=rank, world=ctx.get_world_size(),
                     device=ray.train.torch.get_device(), total_steps=config["total_steps"],
                     steps_per_epoch=config["steps_per_epoch"], resume_dir=resume_dir,
                     log=MetricsLog(output, echo=True) if rank == 0 else None)


def restore(run: WorkerRun, *, model: nn.Module, optimizer, scheduler,
            generators: dict[str, torch.Generator]) -> Progress:
    """The progress of the checkpoint resumed, with its optimiser, schedule and random state loaded
    into these; a fresh start's progress is step 0."""
    if run.resume_dir is None:
        return Progress()
    progress = load_train_state(run.resume_dir, task=model, optimizer=optimizer, scheduler=scheduler)
    load_rng(run.resume_dir, run.rank, generators)
    shutil.rmtree(run.resume_dir, ignore_errors=True)  # everything it held is in memory now
    run.resume_dir = None
    if run.log:
        run.log.write({"event": "resume", "step": progress.step, "epoch": progress.epoch,
                       "step_in_epoch": progress.step_in_epoch})
    return progress


def prepare_for_ranks(model: nn.Module, *, find_unused_parameters: bool) -> nn.Module:
    """`model` under DDP when there are several workers (Ray Train's choice), already on its device."""
    import ray.train.torch

    return ray.train.torch.prepare_model(
        model, move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters, "broadcast_buffers": False})


def maybe_inject_fault(config: dict[str, Any], output: Path, rank: int, step: int) -> None:
    """Tests kill one worker once, mid-epoch (a marker file keeps it to once per output folder)."""
    fault = config.get("fault")
    if not fault or rank != fault["rank"] or step != fault["step"]:
        return
    marker = output / f"{FAULT_MARKER}_step{step}"
    if marker.exists():
        return
    marker.write_text(str(step))
    import ray.train

    ray.train.get_all_reported_checkpoints()  # a crash after the last checkpoint has landed
    os._exit(1)  # a dead process, as a crashed or preempted worker is


def run_epochs(
    run: WorkerRun,
    settings: CycleSettings,
    progress: Progress,
    *,
    step: Callable[[Batch], dict[str, float]],
    save_state: Callable[[Path], None],
    generators: dict[str, torch.Generator],
    replicas: nn.Module,
    shuffle_buffer: int,
    prefetch_batches: int,
) -> None:
    """Train from `progress` to the job's last step: `step` on each batch of this worker's split,
    the metrics every `log_every` steps and at each epoch's end, a checkpoint every
    `checkpoint_every` steps, at each epoch's end and at the end.

    save_state: writes rank 0's training state (model/, train_state.pt) into a folder; every rank
    adds its random state beside it and Ray Train merges the ranks' folders into one checkpoint.
    replicas: the module whose weights every rank must end with alike (checked in the "done" line).
    """
    import ray.train

    total_steps, steps_per_epoch, rank, world = run.total_steps, run.steps_per_epoch, run.rank, run.world
    log = run.log
    last_saved = progress.step

    def save(epoch_end: bool) -> None:
        nonlocal last_saved
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_state(Path(tmp))
            save_rng(Path(tmp), rank, generators)
            ray.train.report({"step": progress.step, "epoch": progress.epoch, "epoch_end": epoch_end},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{progress.step:08d}")
        last_saved = progress.step

    shard = ray.train.get_dataset_shard("train")
    meter = Throughput()
    # rank 0's stdout is what `ray job logs` shows: a plain line every 10 s (pipelines/progress.py)
    steps_left = ProgressLine(f"train {settings.task}", total_steps, "steps", log=print, done=progress.step) if log else None
    for epoch in range(progress.epoch, settings.epochs):
        if progress.step >= total_steps:
            break
        batches = _epoch_batches(shard, settings, epoch, rank, shuffle_buffer, prefetch_batches)
        stopped = False
        epoch_sums: dict[str, float] = {}
        epoch_steps, epoch_meter = 0, Throughput()
        for index, raw in enumerate(batches):
            if progress.step >= total_steps:
                stopped = True  # every worker stops at the same batch
                break
            if index < progress.step_in_epoch or index >= steps_per_epoch:
                continue
            maybe_inject_fault(run.config, run.output, rank, progress.step + 1)
            values = step(raw)
            progress.step += 1
            progress.step_in_epoch += 1
            progress.samples += settings.batch_size * world
            meter.add(settings.batch_size * world)
            epoch_meter.add(settings.batch_size * world)
            epoch_steps += 1
            for name, value in values.items():
                epoch_sums[name] = epoch_sums.get(name, 0.0) + value
            if steps_left:
                steps_left.update(1)
            if progress.step % settings.log_every == 0 or progress.step == total_steps:
                values = mean_over_ranks(values, run.device)
                if log:
                    eta = steps_left.eta_seconds() if steps_left else None
                    log.write({"step": progress.step, "total_steps": total_steps, "epoch": epoch, **values,
                               "samples_per_s": meter.rate(), "steps_per_s": steps_left.rate() if steps_left else None,
                               "eta_s": round(eta, 1) if eta is not None else None})
            if progress.step % settings.checkpoint_every == 0 and progress.step < total_steps:
                save(epoch_end=False)
        if stopped:
            break
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        means = mean_over_ranks({k: v / max(1, epoch_steps) for k, v in epoch_sums.items()}, run.device)
        if log:
            log.write({"event": "epoch_end", "epoch": epoch, "step": progress.step, "samples": progress.samples,
                       **{f"mean_{k}": v for k, v in means.items()}, "samples_per_s": epoch_meter.rate()})
        save(epoch_end=True)
    if last_saved != progress.step:
        save(epoch_end=False)
    if steps_left:
        steps_left.close()
    equal = replicas_equal(replicas)
    if log:
        log.write({"event": "done", "step": progress.step, "samples": progress.samples,
                   "world_size": world, "replicas_equal": equal})


def _epoch_batches(shard, settings: CycleSettings, epoch: int, rank: int, shuffle_buffer: int,
                   prefetch_batches: int) -> Iterable[Batch]:
    """This worker's batches of one epoch. Every worker reads the same number (equal split,
    drop_last); the local shuffle is seeded by (seed, epoch, rank), so that no two workers or
    epochs shuffle alike and a rerun of the same settings shuffles as before."""
    return shard.iter_batches(
        batch_size=settings.batch_size, drop_last=True, batch_format="numpy", prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=settings.seed * 1_000_003 + epoch * 1009 + rank if shuffle_buffer else None,
    )
