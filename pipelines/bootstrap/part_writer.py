"""Workers write: finished rows go to storage as parts, and a whole shard is assembled by a task.

The graph's last stage (`PartWriter`, Ray tasks) writes the rows of each batch as one Parquet
*part* per shard under `_work/parts/<shard>/` and hands the driver only a small record (shard,
part name, rows). When the driver has seen every row of a shard, it starts `assemble_shard` (a
Ray task) which reads that shard's parts, sorts the rows by key, and writes the shard's Parquet
file, tar and stats; then the driver writes the shard's marker. No row and no image passes
through the driver, and no process holds more than one shard.

A part's name is a hash of its keys: a batch that Ray runs twice (a retried task) writes the same
name again, and the driver counts it once.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.bootstrap.layout import parts_folder, shard_files
from pipelines.bootstrap.schema import OK
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_output import output_table, shard_stats, tar_bytes
from pipelines.bootstrap.storage import Storage

RECORD_SCHEMA = pa.schema([("shard", pa.int64()), ("part", pa.string()), ("rows", pa.int64())])


class ShardAssemblyError(RuntimeError):
    """A shard's parts do not hold exactly its planned rows."""


class PartWriter:
    """Ray Data stage: a batch of finished rows (Arrow) in, one record per part written out."""

    def __init__(self, settings: BootstrapSettings):
        self.storage = Storage(settings.output, settings.storage_options)

    def __call__(self, table: pa.Table) -> pa.Table:
        records = []
        shards = table.column("shard")
        for shard in sorted(set(shards.to_pylist())):
            part = table.filter(pc.equal(shards, shard))
            keys = sorted(part.column("key").to_pylist())
            name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
            buf = io.BytesIO()
            pq.write_table(part, buf)
            self.storage.put(f"{parts_folder(shard)}/{name}.parquet", buf.getvalue())
            records.append({"shard": shard, "part": name, "rows": part.num_rows})
        return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def read_parts(storage: Storage, shard: int, parts: list[str]) -> list[dict[str, Any]]:
    tables = [pq.read_table(io.BytesIO(storage.get(f"{parts_folder(shard)}/{p}.parquet"))) for p in sorted(parts)]
    table = pa.concat_tables(tables, promote_options="permissive")
    return sorted(table.to_pylist(), key=lambda r: r["key"])


def assemble_shard(storage: Storage, shard: int, parts: list[str], expected_rows: int, extra_schema: pa.Schema,
                   download_only: bool, parquet_images: bool) -> dict[str, Any]:
    """Write shard `shard`'s files from its parts; returns its marker (stats and file list)."""
    rows = read_parts(storage, shard, parts)
    keys = [r["key"] for r in rows]
    if len(rows) != expected_rows or len(set(keys)) != len(keys):
        raise ShardAssemblyError(f"shard {shard}: parts hold {len(rows)} rows ({len(set(keys))} keys), "
                                 f"planned {expected_rows}")
    if download_only:  # nothing filtered: every web caption of a downloaded image stands
        for r in rows:
            r["web_kept"] = r["status"] == OK and bool(r.get("web_caption"))
            for column in ("synthetic_captions", "synthetic_itm", "synthetic_itc", "synthetic_kept"):
                r[column] = r.get(column) or []
    files = shard_files(shard)
    tar, samples, images = tar_bytes(rows, download_only)
    buf = io.BytesIO()
    pq.write_table(output_table(rows, extra_schema, parquet_images), buf)
    stats = shard_stats(shard, rows, samples, images)
    storage.put(files["parquet"], buf.getvalue())
    storage.put(files["webdataset"], tar)
    storage.put(files["stats"], json.dumps(stats, indent=1, sort_keys=True).encode())
    storage.remove_tree(parts_folder(shard))
    return {**stats, "files": files, "bytes": {"parquet": buf.tell(), "webdataset": len(tar)}}
