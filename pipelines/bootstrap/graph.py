"""The one function that wires the bootstrap graph and its resources, and nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray.data
from ray.data import ActorPoolStrategy

from pipelines.bootstrap.caption_stage import CaptionStage
from pipelines.bootstrap.commit import IO_TASK_CPUS
from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.filter_stage import FilterStage
from pipelines.bootstrap.input_plan import InputPlan
from pipelines.bootstrap.input_reader import read_shards
from pipelines.bootstrap.part_writer import PartWriter
from pipelines.bootstrap.settings import BootstrapSettings

_TASK_STAGES: dict[tuple[type, str], Any] = {}


def run_as_task(batch: dict[str, np.ndarray], stage_cls: type, settings: BootstrapSettings) -> Any:
    """Runs a stage class inside a stateless Ray task; the instance is cached per worker process
    (Ray reuses workers), so its __init__ runs once per worker, not once per batch."""
    key = (stage_cls, settings.model_dump_json())
    stage = _TASK_STAGES.get(key)
    if stage is None:
        stage = _TASK_STAGES[key] = stage_cls(settings)
    return stage(batch)


def build_graph(plan: InputPlan, shards: list, settings: BootstrapSettings,
                stages: dict[str, type] | None = None) -> ray.data.Dataset:
    """read shards -> download (CPU tasks) -> caption (actors) -> filter (actors) -> write parts
    (tasks); the dataset's rows are the small part records the driver commits from.

    `stages` replaces a stage class by name ("caption", "filter"): a test's way to make one fail."""
    classes = {"download": DownloadStage, "caption": CaptionStage, "filter": FilterStage, **(stages or {})}
    # One block per shard so that shards are read in parallel.
    ds = ray.data.from_items([s.to_dict() for s in shards], override_num_blocks=max(len(shards), 1))
    ds = ds.map_batches(read_shards, fn_kwargs={"settings": settings, "duplicates": plan.duplicates},
                        batch_size=1, num_cpus=IO_TASK_CPUS)
    ds = ds.map_batches(run_as_task, fn_kwargs={"stage_cls": classes["download"], "settings": settings},
                        batch_size=settings.download_batch_size, num_cpus=settings.download_cpus)
    if not settings.download_only:
        # Ray Data merges a task's outputs into blocks of up to 128 MiB, so a shard read and
        # downloaded together reaches the captioner as one block, and the captioner's output
        # reaches the filter only when the whole block is captioned: the two stages took turns
        # instead of overlapping (measured at BLIP-base on 2 cores: busy 19 s + 14 s, in turn).
        # Blocks of one model batch let the filter score batch i while the captioner does i+1.
        ds = ds.repartition(target_num_rows_per_block=settings.batch_size)
        model_resources = {"num_cpus": settings.cpus_per_actor, "num_gpus": settings.num_gpus_per_actor or None}
        ds = ds.map_batches(classes["caption"], fn_constructor_args=(settings,), batch_size=settings.batch_size,
                            compute=ActorPoolStrategy(size=settings.captioner_actors), **model_resources)
        ds = ds.map_batches(classes["filter"], fn_constructor_args=(settings,), batch_size=settings.batch_size,
                            compute=ActorPoolStrategy(size=settings.filter_actors), **model_resources)
    return ds.map_batches(run_as_task, fn_kwargs={"stage_cls": PartWriter, "settings": settings},
                          batch_format="pyarrow", batch_size=None, num_cpus=IO_TASK_CPUS)
