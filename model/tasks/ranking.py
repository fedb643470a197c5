"""Rank metrics of the retrieval-style tasks: recall at K, median and mean rank, MRR."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def rank_of(scores: torch.Tensor, truth: int | Sequence[int]) -> int:
    """1-based rank of the best-ranked true item in a row of scores: 1 + the items scored
    strictly higher (a tie is resolved in the true item's favour)."""
    truth = [truth] if isinstance(truth, int) else list(truth)
    best = scores[truth].max()
    return int((scores > best).sum()) + 1


def rank_metrics(ranks: Sequence[int], at: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    r = np.asarray(ranks, dtype=float)
    if r.size == 0:
        raise ValueError("no ranks to summarise")
    out = {f"{prefix}r@{k}": float((r <= k).mean()) for k in at}
    out[f"{prefix}median_rank"] = float(np.median(r))
    out[f"{prefix}mean_rank"] = float(r.mean())
    out[f"{prefix}mrr"] = float((1.0 / r).mean())
    return out
