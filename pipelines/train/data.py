"""The training data as Ray Data datasets: find the files, read them, one row per kept caption.

`resolve_sources` checks every path before any work starts (a missing path or a folder with no
Parquet or WebDataset files fails with a message that names it); `pair_dataset` wires the read
and the pair extraction (pipelines/train/pairs.py) and `decoded_dataset` adds image decoding, so
that it streams into the Ray Train workers beside the training.

Accepted paths:
  - bootstrap output: DIR with parquet/ (read, with the kept flags) and webdataset/;
  - Parquet files, or folders of them (the toy world's splits, e.g. WORLD/human.parquet, whose
    image paths are relative to the file; img2dataset's parquet output);
  - WebDataset .tar files, or folders of them (img2dataset's webdataset output, bootstrap's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines.train.pairs import DecodeImages, rows_to_pairs


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and what is wrong."""


@dataclass(frozen=True)
class Source:
    path: str
    kind: str  # "parquet" or "webdataset"
    files: tuple[str, ...]


def _files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))


def resolve_source(path: str) -> Source:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data: path not found: {path}")
    # Absolute, because read tasks and workers need not run in the driver's working directory.
    p = p.absolute()
    if p.is_file():
        if p.suffix == ".parquet":
            return Source(path, "parquet", (str(p),))
        if p.suffix == ".tar":
            return Source(path, "webdataset", (str(p),))
        raise DataError(f"data: {path} is neither a .parquet nor a WebDataset .tar file")
    if (p / "scenes.jsonl").is_file() and (p / "manifest.json").is_file():
        raise DataError(f"data: {path} is a toy world, whose tables are not all training pairs; name a split: "
                        f"{p / 'human.parquet'} (or val.parquet, test.parquet)")
    if (p / "parquet").is_dir():  # bootstrap output: the Parquet side carries the kept flags
        files = _files(p / "parquet", ".parquet")
        if files:
            return Source(path, "parquet", tuple(map(str, files)))
    tars = _files(p, ".tar")
    if tars:  # img2dataset writes metadata .parquet beside its .tar shards: the shards hold the images
        return Source(path, "webdataset", tuple(map(str, tars)))
    parquets = _files(p, ".parquet")
    if parquets:
        return Source(path, "parquet", tuple(map(str, parquets)))
    raise DataError(f"data: no Parquet or WebDataset (.tar) files under {path}")


def resolve_sources(paths: Sequence[str]) -> list[Source]:
    if not paths:
        raise DataError("data: no paths given (--data)")
    return [resolve_source(p) for p in paths]


def pair_dataset(sources: Sequence[Source]):
    """One Ray Data dataset of (image bytes, caption, image_key) rows, one per kept caption."""
    import ray.data

    datasets = []
    for source in sources:
        if source.kind == "parquet":
            ds = ray.data.read_parquet(list(source.files), include_paths=True)
        else:
            ds = ray.data.read_webdataset(list(source.files), decoder=None, include_paths=True)
        datasets.append(ds.map_batches(rows_to_pairs, batch_format="numpy", udf_modifying_row_count=True))
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
