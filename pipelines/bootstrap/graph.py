"""The one function that wires the bootstrap graph and its resources, and nothing else."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import ray.data
from ray.data import ActorPoolStrategy

from pipelines.bootstrap.commit import IO_TASK_CPUS
from pipelines.bootstrap.input_plan import InputPlan
from pipelines.bootstrap.input_reader import read_shards
from pipelines.bootstrap.part_writer import PartWriter
from pipelines.bootstrap.settings import BootstrapSettings

_TASK_STAGES: dict[tuple[type | str, str], Any] = {}


def stage_class(stage: type | str) -> type:
    """A stage class, or one named "module:Class" and imported here, in the worker that runs it.

    By name, the driver never imports a stage's heavy dependencies: the model stages' torch and
    transformers, and img2dataset, whose package import pulls in torch, pandas and its writers
    (together ~5 s of the driver's start-up, on the critical path of every run)."""
    if isinstance(stage, type):
        return stage
    module, _, name = stage.partition(":")
    return getattr(importlib.import_module(module), name)


def run_as_task(batch: dict[str, np.ndarray], stage_cls: type | str, settings: BootstrapSettings) -> Any:
    """Runs a stage class inside a stateless Ray task; the instance is cached per worker process
    (Ray reuses workers), so its __init__ runs once per worker, not once per batch."""
    key = (stage_cls, settings.model_dump_json())
    stage = _TASK_STAGES.get(key)
    if stage is None:
        stage = _TASK_STAGES[key] = stage_class(stage_cls)(settings)
    return stage(batch)


class ImportedStage:
    """An actor stage named by its import path and imported inside its actor (stage_class)."""

    target = ""  # "module:Class", set by the subclasses made in _imported

    def __init__(self, settings: BootstrapSettings):
        self.stage = stage_class(self.target)(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        return self.stage(batch)


def _imported(name: str, target: str) -> type:
    # A subclass per stage, named as the stage, so that Ray's progress lines still say
    # MapBatches(CaptionStage) and MapBatches(FilterStage).
    return type(name, (ImportedStage,), {"target": target})


MODEL_STAGES = {"caption": _imported("CaptionStage", "pipelines.bootstrap.caption_stage:CaptionStage"),
                "filter": _imported("FilterStage", "pipelines.bootstrap.filter_stage:FilterStage"),
                "fused": _imported("CaptionFilterStage", "pipelines.bootstrap.capfilt_stage:CaptionFilterStage")}


def build_graph(plan: InputPlan, shards: list, settings: BootstrapSettings,
                stages: dict[str, type] | None = None) -> ray.data.Dataset:
    """read shards -> download (CPU tasks) -> caption (actors) -> filter (actors) -> write parts
    (tasks); the dataset's rows are the small part records the driver commits from.

    `stages` replaces a stage class by name ("caption", "filter"): a test's way to make one fail."""
    classes = {"download": "pipelines.bootstrap.download_stage:DownloadStage", **MODEL_STAGES, **(stages or {})}
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
        if settings.model_stages == "fused":  # as many actors as the two pools would have, each doing both
            ds = ds.map_batches(classes["fused"], fn_constructor_args=(settings,), batch_size=settings.batch_size,
                                compute=ActorPoolStrategy(size=settings.captioner_actors + settings.filter_actors),
                                **model_resources)
        else:
            ds = ds.map_batches(classes["caption"], fn_constructor_args=(settings,), batch_size=settings.batch_size,
                                compute=ActorPoolStrategy(size=settings.captioner_actors), **model_resources)
            ds = ds.map_batches(classes["filter"], fn_constructor_args=(settings,), batch_size=settings.batch_size,
                                compute=ActorPoolStrategy(size=settings.filter_actors), **model_resources)
    return ds.map_batches(run_as_task, fn_kwargs={"stage_cls": PartWriter, "settings": settings},
                          batch_format="pyarrow", batch_size=None, num_cpus=IO_TASK_CPUS)
