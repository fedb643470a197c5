"""Repeated --key-col values, found without every key on one process.

A key must name one row. The first row with a key (in global input order) keeps it; a later row
with the same key, or a row without one, becomes a bad_row with a derived key (input_reader.py).
Whether a row is "later" depends on rows in other files and shards, so a reader cannot tell on
its own, and holding every key of a web corpus on the driver (a Python set) does not scale.

A map-reduce over Ray tasks does it instead, as a hash join would:
  - map: each task reads the key column of a run of shards (only that column, only their row
    groups), folds it to (key, first index, count) and cuts it into partitions by a stable hash
    of the key (crc32: Python's hash() differs from process to process);
  - reduce: one task per partition adds up the counts and keeps the keys seen more than once,
    with the smallest index.
Only the repeated keys, normally few, reach the driver; the readers get them with the plan. A shard
whose key column cannot be read is named too: the reader then gives all its rows the same
"cannot read input" status, so no key goes unchecked.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.bootstrap.input_split import BAD, cannot_read
from pipelines.bootstrap.parquet_ranges import read_parquet
from pipelines.bootstrap.settings import BootstrapSettings

ROWS_PER_TASK = 2_000_000  # keys one map or reduce task holds at most (~100 MB)
MAX_PARTITIONS = 256
TASKS_PER_CPU = 2  # at least this many map tasks per CPU, so that every CPU reads
READ_ATTEMPTS = 2  # a second try for a transient error (object storage); a corrupt file fails both


@dataclass(frozen=True)
class RepeatedKeys:
    """What the readers need to know about --key-col values beyond their own shard."""

    first: dict[str, int] = field(default_factory=dict)  # repeated key -> global index of its first row
    unreadable: dict[int, str] = field(default_factory=dict)  # shard -> why its keys could not be read

    def keeps(self, key: str | None, index: int) -> bool:
        """Whether the row at `index` keeps `key`: it has one, and no earlier row has it."""
        return key is not None and self.first.get(key, index) == index


def key_texts(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """A key column as text, the same in the key pass and the reader; "" counts as missing."""
    try:
        values = column.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = [None if v is None else str(v) for v in column.to_pylist()]
    return [v if v else None for v in values]


def shard_columns(shard: Any, columns: list[str], storage_options: dict[str, dict[str, Any]],
                  optional: tuple[str, ...] = ()) -> pa.Table:
    """The given columns of a table shard (a Parquet input's row groups, or a split piece)."""
    return read_parquet(shard.path, storage_options, shard.footer, shard.rg_start, shard.rg_stop, columns,
                        (*optional, BAD) if shard.kind == "piece" else optional)


def _partition(keys: list[str], partitions: int) -> np.ndarray:
    if partitions == 1:
        return np.zeros(len(keys), dtype=np.int64)
    return np.fromiter((zlib.crc32(k.encode("utf-8")) % partitions for k in keys), dtype=np.int64, count=len(keys))


def _shard_keys(shard: Any, key_col: str, storage_options: dict[str, dict[str, Any]]) -> list[str | None]:
    for attempt in range(READ_ATTEMPTS):
        try:
            return key_texts(shard_columns(shard, [key_col], storage_options).column(key_col))
        except Exception:  # as in the reader: a corrupt file raises anything
            if attempt + 1 == READ_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


@ray.remote
def _map_keys(shards: list[Any], key_col: str, storage_options: dict[str, dict[str, Any]], partitions: int
              ) -> tuple[Any, ...]:
    """(partition 0, ..., partition P-1, {shard: why unreadable})."""
    schema = pa.schema([("key", pa.string()), ("index", pa.int64())])
    parts: list[pa.Table] = [schema.empty_table()]
    unreadable: dict[int, str] = {}
    for shard in shards:
        try:
            texts = _shard_keys(shard, key_col, storage_options)
        except Exception as exc:  # noqa: BLE001
            unreadable[shard.shard] = cannot_read(exc)
            continue
        indices = range(shard.first_index, shard.first_index + len(texts))
        parts.append(pa.Table.from_arrays([pa.array(texts, pa.string()), pa.array(indices, pa.int64())],
                                          schema=schema))
    table = pa.concat_tables(parts)
    table = table.filter(pc.is_valid(table.column("key")))  # a missing key is bad on its own
    agg = table.group_by("key").aggregate([("index", "min"), ("index", "count")])
    folded = pa.table({"key": agg.column("key"), "first": agg.column("index_min"), "count": agg.column("index_count")})
    part = _partition(folded.column("key").to_pylist(), partitions)
    return (*(folded.filter(pa.array(part == p)) for p in range(partitions)), unreadable)


def _runs(shards: list[Any], rows: int) -> list[list[Any]]:
    """Consecutive shards in groups of about `rows` rows (a shard is never cut)."""
    groups: list[list[Any]] = [[]]
    count = 0
    for shard in shards:
        if groups[-1] and count + shard.rows > rows:
            groups.append([])
            count = 0
        groups[-1].append(shard)
        count += shard.rows
    return groups


@ray.remote
def _reduce_keys(*parts: pa.Table) -> pa.Table:
    table = pa.concat_tables(parts)
    summed = table.group_by("key").aggregate([("first", "min"), ("count", "sum")])
    return summed.filter(pc.greater(summed.column("count_sum"), 1)).select(["key", "first_min"])


def find_repeated_keys(shards: list[Any], settings: BootstrapSettings) -> RepeatedKeys:
    """Every key held by more than one row, with the global index of its first row."""
    if not shards or not settings.key_col:
        return RepeatedKeys()
    rows = sum(s.rows for s in shards)
    partitions = max(1, min(MAX_PARTITIONS, math.ceil(rows / ROWS_PER_TASK)))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups = _runs(shards, min(ROWS_PER_TASK, math.ceil(rows / (TASKS_PER_CPU * cpus))))
    mapped = [_map_keys.options(num_returns=partitions + 1).remote(g, settings.key_col, settings.storage_options,
                                                                    partitions) for g in groups]
    reduced = ray.get([_reduce_keys.remote(*[m[p] for m in mapped]) for p in range(partitions)])
    unreadable = {k: v for part in ray.get([m[partitions] for m in mapped]) for k, v in part.items()}
    first = {key: index for table in reduced
             for key, index in zip(table.column("key").to_pylist(), table.column("first_min").to_pylist())}
    return RepeatedKeys(first, unreadable)
