"""Caption stage: the captioner writes K synthetic captions for every downloaded image.

An actor pool (GPU where one is given). Rows that are not `ok` pass through untouched with no
captions, so every row still reaches the writer.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from model.generation import GenerationSettings, decoder_prefix, generate_captions
from pipelines.bootstrap.model_stage import CheckpointStage, busy_seconds, key_seed
from pipelines.bootstrap.schema import as_table, batch_len, object_column
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.stage_guard import guarded


def generation_settings(settings: BootstrapSettings) -> GenerationSettings:
    return settings.generation


class CaptionStage(CheckpointStage):
    """Adds `synthetic_captions` (a list per row) and `_seconds_caption` (busy time per row)."""

    def __init__(self, settings: BootstrapSettings):
        super().__init__(settings.captioner, settings.num_gpus_per_actor, settings.precision)
        self.settings = settings
        self.generation = generation_settings(settings)
        # a setting that cannot work stops the job here, before any row, not as a stage_error per batch
        prefix = decoder_prefix(self.tokenizer, settings.prompt, self.med.config.tokens)
        if len(prefix) >= settings.max_length:
            raise ValueError(f"the prompt takes {len(prefix)} tokens; max_length {settings.max_length} leaves no room")

    @guarded("caption")
    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        start = time.perf_counter()
        n = batch_len(batch)
        captions: list[list[str]] = [[] for _ in range(n)]
        rows = self.ok_rows(batch)
        if rows and self.settings.num_captions > 0:
            seeds = [key_seed(self.settings.seed, str(batch["key"][i])) for i in rows]
            generated = generate_captions(self.med, self.tokenizer, self.pixels(batch, rows), seeds, self.generation)
            for i, row_captions in zip(rows, generated):
                captions[i] = list(row_captions)
        out = dict(batch)
        out["synthetic_captions"] = object_column(captions)
        out["_seconds_caption"] = busy_seconds(n, rows, time.perf_counter() - start)
        return as_table(out)
