"""The caption and filter stages in one actor (`--model-stages fused`): each actor captions a
batch, then filters it, holding both models.

Two pools of one actor each (the split layout) run only as fast as the slower stage: at
BLIP-base on 2 CPU cores the caption stage took 0.35 s of a core per image and the filter 0.26,
so the filter's core idled a quarter of the time. Actors that do both balance by construction,
and a batch's rows never leave the process between the two models. The split layout stays for
a cluster that sizes the pools apart (more captioners than filters on GPUs, say).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor

from pipelines.bootstrap.caption_stage import CaptionStage
from pipelines.bootstrap.filter_stage import FilterStage
from pipelines.bootstrap.settings import BootstrapSettings


class CaptionFilterStage:
    """CaptionStage then FilterStage on each batch; each keeps its own retries and per-row
    status, so a failure still names the stage that failed."""

    def __init__(self, settings: BootstrapSettings):
        self.caption = CaptionStage(settings)
        self.filter = FilterStage(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        captioned = self.caption(batch)
        # the filter gets the batch as Ray Data would hand it over between two actor stages
        return self.filter(BlockAccessor.for_block(captioned).to_batch_format("numpy"))
