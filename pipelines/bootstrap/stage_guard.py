"""A stage that raises on one batch costs that batch's rows a status, not the whole job.

Ray Data ends a job on the first exception a map function raises (its `max_errored_blocks` is 0,
and a higher value would drop the block's rows without a word). So every stage's `__call__` is
wrapped here: an exception is tried again `stage_retries` times (a GPU out-of-memory, a flaky
read), then the rows the stage would have worked on leave with status `stage_error` and the
reason, and the batch goes on to the next stage like any other.
"""

from __future__ import annotations

import functools
import re
import sys
import traceback
from typing import Any, Callable

import numpy as np

from pipelines.bootstrap.schema import OK, PENDING, STAGE_ERROR, as_table, object_column


def failure_text(stage: str, exc: BaseException) -> str:
    # no object addresses: the same failure must read the same in every run
    message = re.sub(r" at 0x[0-9a-f]+", "", str(exc)).replace("\n", " ")[:300]
    return f"{stage} failed: {type(exc).__name__}: {message}"


def mark_failed(batch: dict[str, Any], reason: str) -> dict[str, Any]:
    """The batch with every row still in play (ok or pending) set to stage_error."""
    status = [STAGE_ERROR if s in (OK, PENDING) else s for s in batch["status"]]
    error = [reason if s in (OK, PENDING) else e for s, e in zip(batch["status"], batch["error"])]
    out = dict(batch)
    out["status"], out["error"] = object_column(status), object_column(error)
    for column in ("image", "_source_image"):  # a failed row carries no image on
        if column in out:
            out[column] = object_column([None] * len(status))
    return out


def guarded(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a stage's `__call__(self, batch)`; the instance needs `settings.stage_retries`."""

    def decorator(call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def wrapper(self: Any, batch: dict[str, np.ndarray]) -> Any:
            tries = self.settings.stage_retries + 1
            for attempt in range(tries):
                try:
                    return call(self, batch)
                except Exception as exc:  # noqa: BLE001 - any failure of one batch is that batch's
                    print(f"capfilt: {stage} raised on a batch (try {attempt + 1} of {tries}):\n"
                          f"{traceback.format_exc()}", file=sys.stderr, flush=True)
                    last = exc
            marked = mark_failed(batch, failure_text(stage, last))
            try:
                # with no row left to work on the stage only adds its (empty) columns
                return call(self, marked)
            except Exception:  # noqa: BLE001
                return as_table(marked)

        return wrapper

    return decorator
