"""Filter stage: the ITM head judges the web caption and every synthetic caption.

The image is encoded once per row (model.scoring does that); the ITC similarity is recorded
beside the ITM probability so a user can re-threshold later without running the model again.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from model.caption_text import pre_caption
from model.scoring import score_captions
from pipelines.bootstrap.model_stage import CheckpointStage, busy_seconds
from pipelines.bootstrap.schema import as_table, batch_len, object_column
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.stage_guard import guarded


def keep_decisions(itm: list[float], threshold: float, keep: str) -> list[bool]:
    """Which synthetic captions stay: every one at or above the threshold, or only the best."""
    passing = [p >= threshold for p in itm]
    if keep == "best" and any(passing):
        best = max((j for j in range(len(itm)) if passing[j]), key=lambda j: itm[j])  # first on ties
        return [j == best for j in range(len(itm))]
    return passing


class FilterStage(CheckpointStage):
    """Adds web_itm/web_itc/web_kept and synthetic_itm/itc/kept, and `_seconds_filter`."""

    def __init__(self, settings: BootstrapSettings):
        super().__init__(settings.filter, settings.num_gpus_per_actor, settings.precision)
        self.settings = settings

    def web_text(self, web: str) -> str:
        """The web caption as the ITM sees it: BLIP's pre_caption, as its datasets apply it."""
        return pre_caption(web, self.settings.caption_max_words) if self.settings.pre_caption else web

    def decide(self, web: str | None, synthetic: list[str], itm: list[float]) -> tuple[bool, list[bool]]:
        web_itm, syn_itm = (itm[0], itm[1:]) if web is not None else (None, itm)
        web_kept = web is not None and (not self.settings.filter_web or web_itm >= self.settings.threshold)
        return web_kept, keep_decisions(syn_itm, self.settings.threshold, self.settings.keep)

    @guarded("filter")
    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        start = time.perf_counter()
        n = batch_len(batch)
        cols: dict[str, list[Any]] = {
            "web_itm": [None] * n, "web_itc": [None] * n, "web_kept": [False] * n,
            "synthetic_itm": [[] for _ in range(n)], "synthetic_itc": [[] for _ in range(n)],
            "synthetic_kept": [[] for _ in range(n)],
        }
        rows, texts = [], []
        for i in self.ok_rows(batch):
            web = batch["web_caption"][i]
            candidates = ([self.web_text(str(web))] if web is not None else []) + [str(c) for c in batch["synthetic_captions"][i]]
            if candidates:  # an image with no text at all has nothing to score
                rows.append(i)
                texts.append(candidates)
        if rows:
            scores = score_captions(self.med, self.tokenizer, self.pixels(batch, rows), texts)
            for i, candidates, itm, itc in zip(rows, texts, scores.itm, scores.itc):
                web = batch["web_caption"][i]
                offset = 1 if web is not None else 0
                web_kept, syn_kept = self.decide(web, candidates[offset:], list(itm))
                if web is not None:
                    cols["web_itm"][i], cols["web_itc"][i] = float(itm[0]), float(itc[0])
                cols["web_kept"][i] = web_kept
                cols["synthetic_itm"][i] = [float(x) for x in itm[offset:]]
                cols["synthetic_itc"][i] = [float(x) for x in itc[offset:]]
                cols["synthetic_kept"][i] = syn_kept
        out = dict(batch)
        out.pop("_source_image", None)  # the last stage that needs it: not carried to the writer
        out.update({name: object_column(values) for name, values in cols.items()})
        out["_seconds_filter"] = busy_seconds(n, rows, time.perf_counter() - start)
        return as_table(out)
