"""The Ray Train worker loop: wiring only. The step, the schedule, augmentation and checkpoint I/O
are plain functions in step.py, optim.py, augment.py and state.py.

Data position on resume: every worker skips the batches of the current epoch that the checkpoint
counts as done (`Progress.step_in_epoch`), so no optimiser step is taken twice. Ray Data's
streaming split hands blocks to workers as they ask, so the skipped batches are the same number
of pairs, not necessarily the same pairs, as those trained before the failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipelines.train.augment import collate
from pipelines.progress import Progress as ProgressLine
from pipelines.train.metrics import MetricsLog, Throughput
from pipelines.train.optim import make_optimizer, make_scheduler
from pipelines.train.settings import TrainSettings
from pipelines.train.state import Progress, load_rng, load_train_state, save_rng, save_train_state
from pipelines.train.step import StepModule, alpha_for, build_task, caption_prefix, to_device, train_step

FAULT_MARKER = ".fault_injected"


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All-gather before the queue (BLIP does): every rank's queue holds every rank's features."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def parameter_digest(module: torch.nn.Module) -> float:
    """A number that differs when any weight differs (sum of weights times a fixed pattern)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(module.parameters()):
        flat = p.detach().double().flatten().cpu()
        total += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97)).sum() * (i + 1)
    return float(total)


def _replicas_equal(module: torch.nn.Module) -> bool:
    digest = torch.tensor([parameter_digest(module)], dtype=torch.float64)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    backend_device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(digest, device=backend_device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, digest.to(backend_device))
    return all(float(p) == float(parts[0]) for p in parts)


def _maybe_inject_fault(config: dict[str, Any], output: Path, rank: int, step: int) -> None:
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from model.checkpoint import load_checkpoint

    settings = TrainSettings.model_validate(config["settings"])
    output = Path(config["output"])
    total_steps, steps_per_epoch = config["total_steps"], config["steps_per_epoch"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed + rank)

    resume = ray.train.get_checkpoint()
    resume_dir = None
    if resume is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="capfilt-resume-"))
        resume.to_directory(str(resume_dir))
    loaded = load_checkpoint(resume_dir / "model" if resume_dir else config["init"], image_size=settings.image_size)
    med, tokenizer = loaded.med, loaded.tokenizer
    task = build_task(settings, med, tokenizer, gather=_gather).to(device)
    optimizer = make_optimizer(task, settings.lr, settings.weight_decay)
    scheduler = make_scheduler(optimizer, lr=settings.lr, min_lr=settings.min_lr, warmup_steps=settings.warmup_steps,
                               total_steps=total_steps, decay=settings.decay)
    generators = {"augment": torch.Generator().manual_seed(settings.seed * 1000 + rank),
                  "negatives": torch.Generator(device=device).manual_seed(settings.seed * 1000 + 500 + rank)}
    progress = Progress()
    log = MetricsLog(output, echo=rank == 0) if rank == 0 else None
    if resume_dir is not None:
        progress = load_train_state(resume_dir, task=task, optimizer=optimizer, scheduler=scheduler)
        load_rng(resume_dir, rank, generators)
        shutil.rmtree(resume_dir, ignore_errors=True)  # everything it held is in memory now
        if log:
            log.write({"event": "resume", "step": progress.step, "epoch": progress.epoch,
                       "step_in_epoch": progress.step_in_epoch})

    module = ray.train.torch.prepare_model(
        StepModule(task), move_to_device=False,
        # captioner and filter fine-tunes leave part of the MED idle
        parallel_strategy_kwargs={"find_unused_parameters": settings.task != "pretrain", "broadcast_buffers": False},
    )
    autocast = "cuda" if settings.use_gpu and device.type == "cuda" else None
    prefix = caption_prefix(settings)
    max_len = settings.max_text_len or med.config.max_text_len
    last_saved = progress.step

    def save(epoch_end: bool) -> None:
        nonlocal last_saved
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_train_state(Path(tmp), task=task, tokenizer=tokenizer, optimizer=optimizer,
                                 scheduler=scheduler, progress=progress, settings_json=config["settings"])
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
        # Every worker reads the same number of batches (equal split, drop_last); the batches
        # that the checkpoint counts as done are read and skipped.
        batches = shard.iter_batches(
            batch_size=settings.batch_size, drop_last=True, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=settings.shuffle_buffer or None,
            local_shuffle_seed=settings.seed * 1_000_003 + epoch * 1009 + rank if settings.shuffle_buffer else None,
        )
        stopped = False
        epoch_sums: dict[str, float] = {}
        epoch_steps, epoch_meter = 0, Throughput()
        for index, raw in enumerate(batches):
            if progress.step >= total_steps:
                stopped = True  # every worker stops at the same batch
                break
            if index < progress.step_in_epoch or index >= steps_per_epoch:
                continue
            _maybe_inject_fault(config, output, rank, progress.step + 1)
            batch = collate(raw, config=med.config, tokenizer=tokenizer, max_text_len=max_len,
                            generator=generators["augment"], crop_scale_min=settings.crop_scale_min, prefix=prefix,
                            caption_max_words=settings.caption_max_words if settings.pre_caption else None)
            values = train_step(module, to_device(batch, device), optimizer, scheduler,
                                alpha=alpha_for(progress.step, steps_per_epoch), generator=generators["negatives"],
                                grad_clip=settings.grad_clip, autocast_device=autocast)
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
                values = _mean_over_ranks(values, device)
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
        means = _mean_over_ranks({k: v / max(1, epoch_steps) for k, v in epoch_sums.items()}, device)
        if log:
            log.write({"event": "epoch_end", "epoch": epoch, "step": progress.step, "samples": progress.samples,
                       **{f"mean_{k}": v for k, v in means.items()}, "samples_per_s": epoch_meter.rate()})
        save(epoch_end=True)
    if last_saved != progress.step:
        save(epoch_end=False)
    if steps_left:
        steps_left.close()
    equal = _replicas_equal(task.med)
    if log:
        log.write({"event": "done", "step": progress.step, "samples": progress.samples,
                   "world_size": world, "replicas_equal": equal})
