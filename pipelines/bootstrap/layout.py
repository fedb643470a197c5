"""Where everything of a bootstrap output lives, and what counts as committed.

    OUT/parquet/00000.parquet        one row per input row of shard 0: statuses, captions, scores
    OUT/webdataset/00000.tar         the kept pairs as WebDataset samples (see shard_files.py)
    OUT/stats/00000_stats.json       the shard's counts by status and by error (img2dataset's
                                     `_stats.json`), written with its files, readable while the job runs
    OUT/manifest.json                the whole run, written at the end
    OUT/_work/run.json               settings and input of the first start (--resume checks them)
    OUT/_work/done/00000.json        shard 0's marker: written by the driver, last, listing the
                                     shard's files; the only thing a reader or --resume trusts
    OUT/_work/parts/00000/<h>.parquet  rows of shard 0 as workers finished them, until it is whole
    OUT/_work/input/...              the input split once (CSV/TSV/JSONL), when the input needs it

Every shard id has a tar, a Parquet file and a stats file (an empty tar when nothing of the shard
was kept), so `webdataset/{00000..N}.tar` names every shard without gaps.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pipelines.bootstrap.storage import Storage

PARQUET, WEBDATASET, STATS = "parquet", "webdataset", "stats"
WORK, DONE, PARTS, INPUT = "_work", "_work/done", "_work/parts", "_work/input"
RUN_FILE, MANIFEST = "_work/run.json", "manifest.json"


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def shard_files(shard: int) -> dict[str, str]:
    """The files a committed shard has, by kind, relative to the output root."""
    name = shard_name(shard)
    return {"parquet": f"{PARQUET}/{name}.parquet", "webdataset": f"{WEBDATASET}/{name}.tar",
            "stats": f"{STATS}/{name}_stats.json"}


def marker_path(shard: int) -> str:
    return f"{DONE}/{shard_name(shard)}.json"


def parts_folder(shard: int) -> str:
    return f"{PARTS}/{shard_name(shard)}"


class OutputLayout:
    """A bootstrap output folder on a Storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @classmethod
    def at(cls, url: str, storage_options: dict[str, dict[str, Any]] | None = None) -> "OutputLayout":
        return cls(Storage(url, storage_options))

    def done_ids(self) -> set[int]:
        """Ids of the committed shards (from the marker names alone: cheap on object storage)."""
        return {int(n[: -len(".json")]) for n in self.storage.list(DONE) if n.endswith(".json") and n[:-5].isdigit()}

    def markers(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(shard id, marker) of every committed shard, in shard order, read one at a time."""
        for shard in sorted(self.done_ids()):
            yield shard, json.loads(self.storage.get(marker_path(shard)))

    def write_marker(self, shard: int, marker: dict[str, Any]) -> None:
        self.storage.put(marker_path(shard), json.dumps(marker, sort_keys=True).encode())

    def committed_files(self, kind: str) -> list[str]:
        """Root-relative paths of one kind ('parquet', 'webdataset', 'stats') of every committed shard."""
        return [marker["files"][kind] for _, marker in self.markers() if kind in marker.get("files", {})]

    def clear_uncommitted(self) -> None:
        """Remove what a killed run left of shards without a marker: their parts, files and temp
        files. A committed shard's files are never touched."""
        done = {shard_name(s) for s in self.done_ids()}
        stale = []
        for folder in (PARQUET, WEBDATASET, STATS):
            for name in self.storage.list(folder):
                if name.startswith(".") or name.split(".")[0].split("_")[0] not in done:
                    stale.append(f"{folder}/{name}")
        self.storage.remove(stale)
        self.storage.remove_tree(PARTS)
