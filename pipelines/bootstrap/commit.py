"""The driver's whole job while the graph runs: count part records, commit whole shards, report.

For every part record (shard, part, rows) the graph yields, the committer adds the rows to its
shard's count; when a shard's count reaches its planned rows it starts the shard's assembly (a Ray
task, part_writer.assemble_shard) and, once that returns, writes the shard's marker: the commit.
It holds a count and a list of part names per unfinished shard, never a row. Progress lines (rows
done / total, rows/s, ETA, shards committed) go to the log every `progress_seconds`, so that a
person reading the driver's output or `ray job logs` sees where the job stands (pipelines/progress.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa
import ray

from pipelines.bootstrap.layout import OutputLayout
from pipelines.bootstrap.part_writer import assemble_shard
from pipelines.progress import Progress

# What a small task (read a shard, write a part, assemble a shard) reserves: it mostly waits on I/O.
IO_TASK_CPUS = 0.25


class CommitError(RuntimeError):
    """Rows that never arrived, or arrived twice: the run cannot account for every row."""


class Committer:
    def __init__(self, layout: OutputLayout, planned_rows: dict[int, int], extra_schema: pa.Schema,
                 download_only: bool, parquet_images: bool, progress: Progress):
        """`progress` counts rows; `shards_committed` is there for its line's suffix."""
        self.layout = layout
        self.planned = planned_rows  # unfinished shard -> its rows
        self.extra_schema = extra_schema
        self.download_only, self.parquet_images = download_only, parquet_images
        self.progress = progress
        self.shards_committed = 0
        self.parts: dict[int, set[str]] = defaultdict(set)
        self.counts: dict[int, int] = defaultdict(int)
        self.assembling: dict[Any, int] = {}
        self.failed: dict[int, str] = {}
        self._assemble = ray.remote(num_cpus=IO_TASK_CPUS, max_retries=2)(assemble_shard)

    def add(self, record: dict[str, Any]) -> None:
        shard, part, rows = int(record["shard"]), str(record["part"]), int(record["rows"])
        if shard not in self.planned:
            raise CommitError(f"a part of shard {shard}, which this run did not plan or already committed")
        if part in self.parts[shard]:
            return  # the same batch written again by a retried task: same name, same rows
        self.parts[shard].add(part)
        self.counts[shard] += rows
        self.progress.update(rows)
        if self.counts[shard] > self.planned[shard]:
            raise CommitError(f"shard {shard}: {self.counts[shard]} rows arrived, {self.planned[shard]} planned")
        if self.counts[shard] == self.planned[shard]:
            ref = self._assemble.remote(self.layout.storage, shard, sorted(self.parts.pop(shard)),
                                        self.planned[shard], self.extra_schema, self.download_only,
                                        self.parquet_images)
            self.assembling[ref] = shard

    def harvest(self, wait_all: bool = False) -> None:
        """Commit every shard whose assembly has finished (all of them with `wait_all`)."""
        while self.assembling:
            ready, _ = ray.wait(list(self.assembling), num_returns=1 if wait_all else len(self.assembling),
                                timeout=None if wait_all else 0)
            if not ready:
                return
            for ref in ready:
                shard = self.assembling.pop(ref)
                try:
                    marker = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - reported with every other shard's outcome
                    # the task's own exception (a full disk's OSError), not Ray's wrapper and its traceback
                    cause = getattr(exc, "cause", None) or exc
                    self.failed[shard] = f"{type(cause).__name__}: {cause}"[:500]
                    continue
                self.layout.write_marker(shard, marker)  # the commit
                del self.planned[shard], self.counts[shard]
                self.shards_committed += 1
                self.progress.update()

    def missing(self) -> dict[int, int]:
        """Unfinished shard -> rows still awaited."""
        return {s: n - self.counts.get(s, 0) for s, n in self.planned.items() if s not in self.failed}
