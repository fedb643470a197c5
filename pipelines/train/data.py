"""The training data as Ray Data datasets: find the files, read them, one row per kept caption.

`resolve_sources` checks every path before any work starts (a missing path or a folder with no
Parquet or WebDataset files fails with a message that names it); `pair_dataset` wires the read
and the pair extraction (pipelines/train/pairs.py) and `decoded_dataset` adds image decoding, so
that it streams into the Ray Train workers beside the training.

A path is a local path or any fsspec URL (s3://bucket/x, gs://..., file://...). Remote files are
read where they lie: Ray Data's read tasks open them through the same fsspec filesystem, which
takes its endpoint and credentials from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
GOOGLE_APPLICATION_CREDENTIALS, ...) in every worker as on the driver. Nothing is copied.

Accepted paths:
  - bootstrap output: a folder with `_work/`. Its committed shards' tars, as their markers list
    them (pipelines/bootstrap/layout.py): one sample per kept pair, the image in the tar, so the
    Parquet side is not read. Files of a shard without a marker (a killed run) are ignored;
  - Parquet files, or folders of them (the toy world's splits, e.g. WORLD/human.parquet, whose
    image paths are relative to the file; img2dataset's parquet output);
  - WebDataset .tar files, or folders of them (img2dataset's webdataset output).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.bootstrap.layout import DONE, WEBDATASET, WORK, OutputLayout
from pipelines.bootstrap.storage import LOCAL_PROTOCOLS, Storage, open_fs, protocol_of
from pipelines.train.pairs import DecodeImages, rows_to_pairs


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and what is wrong."""


@dataclass(frozen=True)
class Source:
    path: str  # as the user gave it
    kind: str  # "parquet" or "webdataset"
    files: tuple[str, ...]  # absolute local paths, or full URLs (s3://bucket/key) of remote files

    @property
    def local(self) -> bool:
        return protocol_of(self.path) in LOCAL_PROTOCOLS

    def filesystem(self) -> tuple[Any, list[str]]:
        """(fsspec filesystem, the files' paths inside it)."""
        fs, _ = open_fs(self.files[0])
        return fs, [fs._strip_protocol(f) for f in self.files]


def _visible(path: str) -> bool:
    return not posixpath.basename(path).startswith(".")


def _bootstrap_source(path: str, url: str) -> Source:
    """The committed tars of a bootstrap output, as its markers list them."""
    storage = Storage(url)
    try:
        tars = OutputLayout(storage).committed_files(WEBDATASET)
    except Exception as exc:  # noqa: BLE001 - an unreadable marker, whatever the filesystem raises
        raise DataError(f"data: {path}: cannot read the bootstrap output's markers ({DONE}/): {exc}") from None
    if not tars:
        raise DataError(f"data: {path} is a bootstrap output with no committed shard yet "
                        f"(no marker in {DONE}/ lists a {WEBDATASET}/ tar)")
    return Source(path, "webdataset", tuple(storage.uri(t) for t in tars))


def resolve_source(path: str) -> Source:
    try:
        fs, root = open_fs(path)
    except (ValueError, ImportError) as exc:  # an unknown protocol, or its package not installed
        raise DataError(f"data: cannot open {path}: {exc}") from None
    local = protocol_of(path) in LOCAL_PROTOCOLS
    root = root.rstrip("/") or "/"

    def url(p: str) -> str:
        # Absolute, because read tasks and workers need not run in the driver's working directory.
        return p if local else fs.unstrip_protocol(p)

    def join(*parts: str) -> str:
        return posixpath.join(root, *parts)

    try:
        if not fs.exists(root):
            raise DataError(f"data: path not found: {path}")
        is_file = fs.isfile(root)
        if not is_file:
            if fs.isfile(join("scenes.jsonl")) and fs.isfile(join("manifest.json")):
                raise DataError(f"data: {path} is a toy world, whose tables are not all training pairs; name a "
                                f"split: {url(join('human.parquet'))} (or val.parquet, test.parquet)")
            bootstrap = fs.exists(join(WORK))
            found = [] if bootstrap else sorted(f for f in fs.find(root) if _visible(f))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - s3fs, gcsfs... raise their own types (no credentials, no bucket)
        raise DataError(f"data: cannot read {path}: {exc}") from None
    if is_file:
        if root.endswith(".parquet"):
            return Source(path, "parquet", (url(root),))
        if root.endswith(".tar"):
            return Source(path, "webdataset", (url(root),))
        raise DataError(f"data: {path} is neither a .parquet nor a WebDataset .tar file")
    if bootstrap:
        return _bootstrap_source(path, url(root))
    tars = [f for f in found if f.endswith(".tar")]
    if tars:  # img2dataset writes metadata .parquet beside its .tar shards: the shards hold the images
        return Source(path, "webdataset", tuple(map(url, tars)))
    parquets = [f for f in found if f.endswith(".parquet")]
    if parquets:
        return Source(path, "parquet", tuple(map(url, parquets)))
    raise DataError(f"data: no Parquet or WebDataset (.tar) files under {path}")


def resolve_sources(paths: Sequence[str]) -> list[Source]:
    if not paths:
        raise DataError("data: no paths given (--data)")
    return [resolve_source(p) for p in paths]


def _read(source: Source):
    """Ray Data's read of one source, straight from its filesystem."""
    import ray.data

    if source.local:
        files, filesystem, fs = list(source.files), None, None
    else:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        # The fsspec filesystem, wrapped for Arrow: read tasks rebuild it from the environment
        # (the endpoint and keys), where Arrow's own S3 client would need its own configuration.
        fs, files = source.filesystem()
        filesystem = PyFileSystem(FSSpecHandler(fs))
    if source.kind == "parquet":
        ds = ray.data.read_parquet(files, filesystem=filesystem, include_paths=True)
    else:
        ds = ray.data.read_webdataset(files, filesystem=filesystem, decoder=None, include_paths=True)
    # `fs` reads the image paths of a remote Parquet split, relative to its file
    return ds.map_batches(rows_to_pairs, fn_kwargs={"fs": fs}, batch_format="numpy", udf_modifying_row_count=True)


def pair_dataset(sources: Sequence[Source]):
    """One Ray Data dataset of (image bytes, caption, image_key) rows, one per kept caption."""
    datasets = [_read(source) for source in sources]
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])


def decoded_dataset(pairs, image_size: int):
    """Pairs with images decoded to (S, S, 3) uint8; undecodable images dropped."""
    # An instance, not the class: decoding holds no state worth an actor, so it runs as tasks.
    return pairs.map_batches(DecodeImages(image_size), batch_format="numpy", udf_modifying_row_count=True)


def scan_pairs(pairs, sources: Sequence[Source], caption_limit: int = 0) -> tuple[int, list[str]]:
    """One pass over the captions: the number of pairs, and the first `caption_limit` captions
    (to train a tokenizer for a model started from scratch). DataError when there are none,
    before any training starts."""
    count, captions = 0, []
    for batch in pairs.select_columns(["caption"]).iter_batches(batch_size=4096, batch_format="numpy"):
        column = batch["caption"]
        count += len(column)
        if len(captions) < caption_limit:
            captions += [str(c) for c in column[: caption_limit - len(captions)]]
    if count == 0:
        names = ", ".join(s.path for s in sources)
        raise DataError(f"data: no (image, caption) pairs in {names} "
                        "(no rows with status ok, a kept caption and a readable image)")
    return count, captions
