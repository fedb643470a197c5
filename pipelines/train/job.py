"""A training job on the driver: check the data, prepare the starting model, run the TorchTrainer.

`run_training(settings)` is what `capfilt pretrain` and `capfilt finetune caption|filter` call.
Everything that can be wrong with the data is found here, before a worker starts. The output
folder holds:
  settings.json     the settings of the latest start
  init/             the starting checkpoint when the job starts from scratch (a model of the
                    preset and a tokenizer trained on the data's captions)
  metrics.jsonl     one line per log step, epoch end, resume and the end (pipelines/train/metrics.py)
  ray/              Ray Train's run folder: its checkpoints (checkpoint_stepNNNNNNNN/) and the
                    snapshot that makes a job started again on the same folder resume
  model/            the final checkpoint (model.checkpoint format): `capfilt bootstrap` takes it
                    as --captioner / --filter, `capfilt evaluate` as --checkpoint
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.atomic_write import replacing_folder
from pipelines.ray_session import start_or_join_ray
from pipelines.train.data import DataError, decoded_dataset, pair_dataset, resolve_sources, scan_pairs
from pipelines.train.metrics import read_metrics
from pipelines.train.optim import steps_per_epoch as steps_per_epoch_of
from pipelines.train.settings import JobSettings, TrainSettings
from pipelines.train.state import MODEL_DIR

if TYPE_CHECKING:
    from pipelines.train.tasks.settings import TaskJobSettings

RUN_NAME = "ray"
INIT_DIR = "init"
TOKENIZER_SAMPLE = 200_000  # captions read to train a from-scratch tokenizer
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"  # make_trainer: why
ROLES = {"pretrain": ["captioner", "filter"], "caption": ["captioner"], "filter": ["filter"]}


def ensure_ray(settings: TrainSettings) -> None:
    """Join the cluster that RAY_ADDRESS names, or start a local Ray (never a stray cluster:
    pipelines/ray_session.py) with room for the workers and for Ray Data's tasks beside them.
    Workers' output is shown, as before; a Ray started here ends with the process."""
    start_or_join_ray(settings.num_workers * settings.cpus_per_worker + 1, log_to_driver=True)


def prepare_init(settings: TrainSettings, captions: list[str]) -> Path | str:
    """The checkpoint the workers start from: --init (a hub name pinned to the commit it resolves
    to now, so that every worker loads the same weights), or a fresh model of --preset whose
    tokenizer is trained on the data's captions (kept in OUTPUT/init, reused on resume)."""
    if settings.init is not None:
        from model.hub import resolve_checkpoint

        source = resolve_checkpoint(settings.init)  # an unknown name fails here, before Ray Train
        return source.pinned if source.repo_id or source.preset else source.path
    init = settings.output / INIT_DIR
    if (init / "config.json").is_file():
        return init
    from model.config import preset
    from model.random_init import save_random_checkpoint
    from model.tokenizer import train_wordpiece

    base = preset(settings.preset)
    tokenizer = train_wordpiece(captions, vocab_size=base.vocab_size)
    save_random_checkpoint(init, settings.preset, tokenizer, seed=settings.seed,
                           image_size=settings.image_size or base.image_size,
                           extra={"roles": ROLES["pretrain"], "initialised": "random", "seed": settings.seed})
    return init


def build_trainer(settings: TrainSettings, *, fault: dict[str, Any] | None = None):
    """Everything up to `trainer.fit()`: data checked and counted, starting model ready."""
    sources = resolve_sources(settings.data)  # DataError on a bad path, before Ray starts
    ensure_ray(settings)
    pairs = pair_dataset(sources)
    fresh = settings.init is None and not (settings.output / INIT_DIR / "config.json").is_file()
    num_pairs, captions = scan_pairs(pairs, sources, TOKENIZER_SAMPLE if fresh else 0)  # DataError when none
    per_step = settings.batch_size * settings.num_workers
    if num_pairs < per_step:
        raise DataError(f"data: {num_pairs} pairs is less than one step needs "
                   f"(batch_size {settings.batch_size} x num_workers {settings.num_workers} = {per_step})")
    settings.output.mkdir(parents=True, exist_ok=True)
    init = prepare_init(settings, captions)
    image_size = settings.image_size or image_size_of(init)
    per_epoch = steps_per_epoch_of(num_pairs, settings.batch_size, settings.num_workers)
    total = per_epoch * settings.epochs
    if settings.max_steps:
        total = min(total, settings.max_steps)
    settings_json = settings.model_dump(mode="json")
    (settings.output / "settings.json").write_text(json.dumps(settings_json, indent=2) + "\n")
    # Paths absolute: Ray Train workers do not run in the driver's working directory.
    config = {"settings": settings_json, "output": str(settings.output.resolve()),
              "init": init if isinstance(init, str) else str(init.absolute()),  # a pinned hub name as it is
              "total_steps": total, "steps_per_epoch": per_epoch, "num_pairs": num_pairs, "fault": fault}
    return make_trainer(settings, "pipelines.train.loop:train_loop_per_worker", config, decoded_dataset(pairs, image_size))


def image_size_of(init: Path | str) -> int:
    """The starting checkpoint's image size: from its config where that states it, else (a BLIP
    .pth) from its loaded weights."""
    from model.checkpoint_files import image_size_on_disk
    from model.hub import resolve_checkpoint

    size = image_size_on_disk(resolve_checkpoint(init).path)
    if size is not None:
        return size
    from model.checkpoint import load_checkpoint

    return load_checkpoint(init).config.image_size


def run_named_loop(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the loop that config["loop"] names ("module:function"),
    imported there. The driver passes the name, not the function, so that it never imports the
    model's code (transformers' BLIP modules and torch._dynamo, ~4 s of CPU on a 2-core machine,
    before Ray had started); the workers import it anyway to train."""
    module, name = config["loop"].split(":")
    getattr(importlib.import_module(module), name)(config)


def make_trainer(settings: JobSettings | TaskJobSettings, loop: str, config: dict[str, Any], dataset) -> Any:
    """The TorchTrainer of a training job (this module's and pipelines/train/tasks/job.py's), whose
    workers run `loop` ("module:function", run_named_loop): its run folder is OUTPUT/ray, so that a
    job started again on OUTPUT resumes from its checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    # Ray Train's controller polls its workers (their reports, their checkpoints, the end of
    # training) at most every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default, and a job's start
    # and end each wait out some of these polls. At 0.5 s the README's 20-step fine-tune takes
    # 38.2 s instead of 41.5 on 2 cores (medians of 6 alternated runs); a poll costs one actor
    # call per worker. fit() hands the driver's value on to the controller; one the user set stands.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)
    return TorchTrainer(
        run_named_loop,
        train_loop_config={**config, "loop": loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker, **({"GPU": 1} if settings.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(settings.output.resolve()), name=RUN_NAME,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )


def keep_final_model(result, output: Path, roles: list[str] | None = None) -> Path:
    """Copy the model of the job's last checkpoint to OUTPUT/model, replacing the previous one only
    once the copy is whole; `roles`, when given, are written into its extra.json."""
    if result.checkpoint is None:
        raise RuntimeError(f"training in {output} ended without a checkpoint")
    final = output / MODEL_DIR
    with result.checkpoint.as_directory() as directory:
        source = Path(directory) / MODEL_DIR
        with replacing_folder(final) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            if roles is not None:
                _set_roles(tmp, roles)
    return final


def run_training(settings: TrainSettings, *, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train; return a summary. The final model lands in OUTPUT/model."""
    trainer = build_trainer(settings, fault=fault)
    result = trainer.fit()
    final = keep_final_model(result, settings.output, ROLES[settings.task])
    records = read_metrics(settings.output)
    done = [r for r in records if r.get("event") == "done"]
    return {"output": str(settings.output), "model": str(final), "checkpoint": result.checkpoint.path,
            **({k: done[-1][k] for k in ("step", "samples", "world_size", "replicas_equal")} if done else {})}


def _set_roles(model_dir: Path, roles: list[str]) -> None:
    """extra.json says which modes the checkpoint was trained for (it is not hashed)."""
    path = model_dir / "extra.json"
    extra = json.loads(path.read_text()) if path.is_file() else {}
    extra["roles"] = roles
    path.write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
