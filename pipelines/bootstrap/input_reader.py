"""Read work shards into rows (WORK_SCHEMA), inside Ray: the first stage of the graph.

A shard reads only its own rows and the columns the job needs (input_plan.py says which). It
never fails the job:
  - a bad row leaves with status `bad_row` and the reason (url missing, not http(s), a key that is
    missing or repeated, a line that could not be parsed);
  - a shard that cannot be read at all (a corrupt file), after a second try, leaves as its planned
    number of placeholder rows with derived keys, status `bad_row` and "cannot read input: ...".
Rows of an img2dataset or capfilt output that already hold an image carry it, and the download
stage then validates and resizes it instead of fetching the URL.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipelines.bootstrap.input_keys import READ_ATTEMPTS, RepeatedKeys, key_texts, shard_columns
from pipelines.bootstrap.input_plan import CAPFILT_COLUMNS, I2D_IMAGE_COLUMNS, InputError, WorkShard
from pipelines.bootstrap.input_split import BAD, cannot_read
from pipelines.bootstrap.parquet_ranges import read_parquet
from pipelines.bootstrap.schema import BAD_ROW, DECODE_ERROR, DOWNLOAD_ERROR, OK, PENDING, WORK_SCHEMA
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_output import wds_key
from pipelines.bootstrap.storage import open_fs

__all__ = ["InputError", "WorkShard", "read_shard", "read_shards"]

KEY_WIDTH = 10  # derived keys: the zero-padded global row index, sortable like img2dataset's
REPEATED = "key missing or repeated"
I2D_COLUMNS = ("key", "url", "caption", "status", "error_message")
MISSING_IMAGE = "image missing from the input's webdataset"

Rows = dict[str, list]


def derived_key(index: int) -> str:
    return f"{index:0{KEY_WIDTH}d}"


def read_shards(batch: dict[str, Any], settings: BootstrapSettings, duplicates: RepeatedKeys | None) -> pa.Table:
    """Ray Data stage: a batch of WorkShard.to_dict() rows in, every row of those shards out."""
    shards = [WorkShard.from_dict({k: batch[k][i] for k in batch}) for i in range(len(batch["shard"]))]
    tables = [read_shard(s, settings, duplicates) for s in shards]
    return pa.concat_tables(tables) if tables else WORK_SCHEMA.empty_table()


def read_shard(shard: WorkShard, settings: BootstrapSettings, duplicates: RepeatedKeys | None = None) -> pa.Table:
    """Every row of one work shard, exactly `shard.rows` of them."""
    repeated = duplicates or RepeatedKeys()
    if shard.shard in repeated.unreadable:  # its keys went unchecked: none of its rows may pass
        return pa.Table.from_pydict(_placeholders(shard, repeated.unreadable[shard.shard]), schema=WORK_SCHEMA)
    reader: Callable[[WorkShard, BootstrapSettings, RepeatedKeys], Rows] = READERS[shard.kind]
    for attempt in range(READ_ATTEMPTS):
        try:
            rows = reader(shard, settings, repeated)
            if len(rows["key"]) != shard.rows:
                raise ValueError(f"{len(rows['key'])} rows where the plan counted {shard.rows}")
            break
        except Exception as exc:  # noqa: BLE001 - a corrupt file raises anything; its rows must still leave
            if attempt + 1 == READ_ATTEMPTS:
                rows = _placeholders(shard, cannot_read(exc))
    return pa.Table.from_pydict(rows, schema=WORK_SCHEMA)


def _placeholders(shard: WorkShard, reason: str) -> Rows:
    rows = _empty()
    for i in range(shard.rows):
        _put(rows, derived_key(shard.first_index + i), None, None, shard.shard, BAD_ROW, reason, None, None)
    return rows


def _empty() -> Rows:
    return {name: [] for name in WORK_SCHEMA.names}


def _put(rows: Rows, key: str, url: Any, caption: Any, shard: int, status: str, error: str | None,
         image: bytes | None, extra: str | None) -> None:
    rows["key"].append(key)
    rows["url"].append(url if isinstance(url, str) else None)
    rows["web_caption"].append(caption)
    rows["shard"].append(shard)
    rows["status"].append(status)
    rows["error"].append(error)
    rows["image"].append(image)
    rows["_extra"].append(extra)


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "url missing"
    if not url.lower().startswith(("http://", "https://")):
        return f"url scheme not http(s): {url[:80]}"
    return None


def _extras(table: pa.Table, names: list[str]) -> list[str | None]:
    """The carried columns of each row as one JSON object (None when none are carried)."""
    if not names:
        return [None] * table.num_rows
    columns = [table.column(n).to_pylist() for n in names]
    return [json.dumps(dict(zip(names, values)), default=str) for values in zip(*columns)]


def _texts(table: pa.Table, name: str) -> list[str | None]:
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    return [None if v is None else v if isinstance(v, str) else str(v) for v in column.to_pylist()]


def _table_rows(shard: WorkShard, settings: BootstrapSettings, duplicates: RepeatedKeys) -> Rows:
    """A Parquet input's row groups, or a piece of a split file."""
    extra_names = list(settings.save_additional_columns)
    columns = [settings.url_col, settings.caption_col, *([settings.key_col] if settings.key_col else []), *extra_names]
    table = shard_columns(shard, list(dict.fromkeys(columns)), settings.storage_options)
    n = table.num_rows
    urls = table.column(settings.url_col).to_pylist()
    captions = _texts(table, settings.caption_col)
    keys = key_texts(table.column(settings.key_col)) if settings.key_col else [None] * n
    bad = table.column(BAD).to_pylist() if BAD in table.column_names else [None] * n
    extras = _extras(table, extra_names)
    rows = _empty()
    for i in range(n):
        index = shard.first_index + i
        key, error = derived_key(index), bad[i]
        if settings.key_col:
            key = keys[i]
            if not duplicates.keeps(key, index):
                # keep keys unique: a missing or repeated key gets the row's position appended
                key, error = f"{keys[i] or ''}~row{derived_key(index)}", error or REPEATED
        error = error or _url_problem(urls[i])
        _put(rows, key, urls[i], captions[i], shard.shard, BAD_ROW if error else PENDING, error, None, extras[i])
    return rows


def _tar_images(url: str, settings: BootstrapSettings, extensions: tuple[str, ...]) -> dict[str, bytes]:
    """{sample key: image bytes} of a tar, read whole in one request (every byte of it is needed)."""
    fs, path = open_fs(url, settings.storage_options)
    images: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path)), mode="r:") as tar:
        for member in tar:
            stem, _, ext = member.name.rpartition(".")
            if ext in extensions and member.isfile():
                images.setdefault(stem, tar.extractfile(member).read())
    return images


def _i2d_rows(shard: WorkShard, settings: BootstrapSettings, duplicates: RepeatedKeys) -> Rows:
    """One img2dataset shard: its metadata Parquet lists every sample, failures included."""
    extra_names = list(settings.save_additional_columns)
    images: dict[str, bytes] = {}
    if shard.kind == "i2d_wds":
        images = _tar_images(shard.images, settings, I2D_IMAGE_COLUMNS)
    if shard.path:
        optional = (*I2D_COLUMNS, *(I2D_IMAGE_COLUMNS if shard.kind == "i2d_parquet" else ()))
        table = read_parquet(shard.path, settings.storage_options, shard.footer, shard.rg_start, shard.rg_stop,
                             extra_names, optional)
        meta = table.to_pylist()
        extras = _extras(table, extra_names)
    else:  # a tar without its metadata Parquet: its images are its rows
        meta = [{"key": k, "status": "success"} for k in sorted(images)]
        extras = [None] * len(meta)
    rows = _empty()
    for row, extra in zip(meta, extras):
        key = str(row["key"])
        blob = images.get(key) or next((row.get(c) for c in I2D_IMAGE_COLUMNS if row.get(c) is not None), None)
        ok = row.get("status", "success") == "success" and blob is not None
        status = PENDING if ok else (DECODE_ERROR if row.get("status") == "failed_to_resize" else DOWNLOAD_ERROR)
        error = None if ok else (row.get("error_message") or "no image in img2dataset output")
        _put(rows, key, row.get("url"), row.get("caption"), shard.shard, status, error, blob if ok else None, extra)
    return rows


def _capfilt_rows(shard: WorkShard, settings: BootstrapSettings, duplicates: RepeatedKeys) -> Rows:
    """One committed shard of a capfilt output: its rows keep their keys; an ok row brings its
    image (from the Parquet's image column, else its sample in the tar), a failed row its status."""
    extra_names = list(settings.save_additional_columns)
    table = read_parquet(shard.path, settings.storage_options, shard.footer, shard.rg_start, shard.rg_stop,
                         [*CAPFILT_COLUMNS, *extra_names], ("image",))
    statuses = table.column("status").to_pylist()
    keys = table.column("key").to_pylist()
    if "image" in table.column_names:
        blobs = table.column("image").to_pylist()
    elif OK in statuses and shard.images:
        tar = _tar_images(shard.images, settings, ("jpg",))
        blobs = [tar.get(wds_key(k)) if k is not None else None for k in keys]
    else:
        blobs = [None] * table.num_rows
    urls, captions, errors = (table.column(c).to_pylist() for c in ("url", "web_caption", "error"))
    extras = _extras(table, extra_names)
    rows = _empty()
    for i, key in enumerate(keys):
        status, error, image = statuses[i], errors[i], None
        if status == OK:  # downloaded before: caption and filter it, do not fetch it again
            image = blobs[i]
            status, error = (PENDING, None) if image is not None else (DOWNLOAD_ERROR, MISSING_IMAGE)
        _put(rows, key, urls[i], captions[i], shard.shard, status, error, image, extras[i])
    return rows


READERS: dict[str, Callable[[WorkShard, BootstrapSettings, RepeatedKeys], Rows]] = {
    "parquet": _table_rows, "piece": _table_rows, "i2d_wds": _i2d_rows, "i2d_parquet": _i2d_rows,
    "capfilt": _capfilt_rows,
}
