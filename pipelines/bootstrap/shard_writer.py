"""Write finished rows as Parquet and WebDataset shards, one pair per work shard, atomically.

Rows of a work shard arrive in any order and spread over many batches; the writer buffers them
until the shard is whole (the plan says how many rows it holds), then writes each file under a
temporary name and renames it into place, and writes the shard's done-marker last. A shard
counts as done only when its marker exists: that is what `--resume` trusts, so a run killed at
any instant leaves either a done shard or one that is simply done again.

Rows are sorted by key before writing, so a shard's content does not depend on arrival order,
and a resumed run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.bootstrap.schema import OK, OUTPUT_SCHEMA

STAGES = ("download", "caption", "filter")


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


class OutputLayout:
    """Where everything lives under the output folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.parquet = self.root / "parquet"
        self.webdataset = self.root / "webdataset"
        self.work = self.root / "_work"
        self.done = self.work / "done"
        self.manifest = self.root / "manifest.json"

    def make(self) -> None:
        for folder in (self.parquet, self.webdataset, self.done):
            folder.mkdir(parents=True, exist_ok=True)

    def done_shards(self) -> dict[int, dict[str, Any]]:
        """Shard id -> its marker (stats) for every committed shard."""
        if not self.done.is_dir():
            return {}
        return {int(p.stem): json.loads(p.read_text()) for p in sorted(self.done.glob("*.json"))}

    def clear_uncommitted(self) -> None:
        """Remove temp files and any shard files without a marker (from a killed run)."""
        done = {shard_name(s) for s in self.done_shards()}
        for folder in (self.parquet, self.webdataset):
            for path in folder.glob("*") if folder.is_dir() else []:
                if path.name.startswith(".") or path.name.split(".")[0] not in done:
                    path.unlink()


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: a reader sees the old name absent or the whole file


def kept_captions(row: dict[str, Any]) -> list[str]:
    kept = [row["web_caption"]] if row["web_kept"] and row["web_caption"] is not None else []
    return kept + [c for c, k in zip(row["synthetic_captions"] or [], row["synthetic_kept"] or []) if k]


def tar_bytes(rows: list[dict[str, Any]]) -> bytes:
    """A WebDataset tar: key.jpg, key.json, key.txt for every image that kept a caption."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            captions = kept_captions(row)
            if row["status"] != OK or not captions:
                continue
            meta = {k: v for k, v in row.items() if k != "image"}
            meta["kept_captions"] = captions
            for ext, data in (("jpg", row["image"]), ("json", json.dumps(meta, sort_keys=True).encode()),
                              ("txt", "\n".join(captions).encode())):
                info = tarfile.TarInfo(f"{row['key']}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: same bytes every run
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_stats(rows: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    statuses = Counter(r["status"] for r in rows)
    return {
        "rows": len(rows),
        "status": dict(sorted(statuses.items())),
        "kept_web": sum(bool(r["web_kept"]) for r in rows),
        "kept_synthetic": sum(sum(bool(k) for k in (r["synthetic_kept"] or [])) for r in rows),
        "synthetic_captions": sum(len(r["synthetic_captions"] or []) for r in rows),
        "images_in_webdataset": sum(1 for r in rows if r["status"] == OK and kept_captions(r)),
        "stage_rows": {
            "download": sum(1 for r in rows if r["_fetched"]),
            "caption": statuses.get(OK, 0),
            "filter": statuses.get(OK, 0),
        },
        "stage_seconds": seconds,
    }


class ShardWriter:
    """Buffers rows per shard; commits a shard (parquet, tar, marker) when it is whole."""

    def __init__(self, layout: OutputLayout, expected_rows: dict[int, int]):
        self.layout = layout
        self.expected = dict(expected_rows)
        self.buffers: dict[int, list[pa.Table]] = defaultdict(list)
        self.counts: Counter[int] = Counter()
        self.committed: dict[int, dict[str, Any]] = {}
        layout.make()

    def add(self, table: pa.Table) -> None:
        shards = table.column("shard").to_pylist()
        for shard in sorted(set(shards)):
            if shard not in self.expected:
                raise ValueError(f"row of unplanned shard {shard}")
            part = table.filter(pc.equal(table.column("shard"), shard)) if len(set(shards)) > 1 else table
            self.buffers[shard].append(part)
            self.counts[shard] += part.num_rows
            if self.counts[shard] > self.expected[shard]:
                raise ValueError(f"shard {shard}: {self.counts[shard]} rows, planned {self.expected[shard]}")
            if self.counts[shard] == self.expected[shard]:
                self.commit(shard)

    def commit(self, shard: int) -> None:
        table = pa.concat_tables(self.buffers.pop(shard), promote_options="permissive")
        rows = sorted(table.to_pylist(), key=lambda r: r["key"])
        seconds = {s: float(sum(r.get(f"_seconds_{s}") or 0.0 for r in rows)) for s in STAGES}
        for r in rows:
            r["_fetched"] = bool(r.get("_seconds_download"))
        out = pa.Table.from_pylist([{k: r.get(k) for k in OUTPUT_SCHEMA.names} for r in rows], schema=OUTPUT_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(out, buf)
        name = shard_name(shard)
        atomic_write(self.layout.parquet / f"{name}.parquet", buf.getvalue())
        stats = shard_stats(rows, seconds)
        if stats["images_in_webdataset"]:  # no empty tars: webdataset readers refuse them by default
            atomic_write(self.layout.webdataset / f"{name}.tar",
                         tar_bytes([{k: r.get(k) for k in OUTPUT_SCHEMA.names} for r in rows]))
        atomic_write(self.layout.done / f"{name}.json", json.dumps(stats, sort_keys=True).encode())
        self.committed[shard] = stats

    def missing(self) -> dict[int, int]:
        """Shard -> rows still awaited; empty when every planned shard was committed."""
        return {s: n - self.counts[s] for s, n in self.expected.items() if s not in self.committed}
