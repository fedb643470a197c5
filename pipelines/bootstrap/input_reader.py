"""Plan the input into deterministic work shards, and read one shard into rows.

Planning runs once on the driver: it lists the input files (local or any fsspec URL; a file, a
folder or a glob), counts their rows and cuts them into shards of `shard_size` rows that never
cross a file. A shard is the unit of work and of resume, so the plan must come out the same
every time for the same input: files are sorted, keys derive from the global row position.

Reading a shard runs inside Ray (see graph.py) and never fails on a bad row: the row leaves
with status `bad_row` and the reason.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.bootstrap.schema import BAD_ROW, DECODE_ERROR, DOWNLOAD_ERROR, PENDING, WORK_SCHEMA
from pipelines.bootstrap.settings import BootstrapSettings

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
I2D_IMAGE_COLUMNS = ("jpg", "png", "webp")
KEY_WIDTH = 10  # derived keys: the zero-padded global row index, sortable like img2dataset's


class InputError(ValueError):
    """The input cannot be planned (missing file or column); raised before any work starts."""


@dataclass(frozen=True)
class WorkShard:
    shard: int
    kind: str  # parquet | csv | tsv | jsonl | i2d_wds | i2d_parquet
    path: str  # fsspec URL of the file (the tar for i2d_wds)
    start: int  # first row of the file in this shard (table kinds)
    stop: int
    first_index: int  # global row index of `start`, for derived keys
    bad_keys: tuple[int, ...] = ()  # global indices whose --key-col value is null or repeated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _list_files(spec: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, path = fsspec.core.url_to_fs(spec)
    if any(ch in path for ch in "*?["):
        files = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        files = [p for p in fs.find(path) if fs.isfile(p)]
    elif fs.isfile(path):
        files = [path]
    else:
        raise InputError(f"input: nothing found at {spec}")
    return fs, sorted(files)


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name[name.rfind("."):].lower() if "." in name else ""


def detect_format(settings: BootstrapSettings) -> str:
    """'img2dataset' or a table format ('auto' means one per file, by its suffix)."""
    if settings.input_format != "auto":
        return settings.input_format
    fs, files = _list_files(settings.input)
    names = [f.rsplit("/", 1)[-1] for f in files]
    if any(n.endswith("_stats.json") for n in names) or any(n.endswith(".tar") for n in names):
        return "img2dataset"
    return "auto"


def read_table(fs: fsspec.AbstractFileSystem, path: str, kind: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as f:
        data = f.read()
    if kind == "parquet":
        return pq.read_table(io.BytesIO(data), columns=columns)
    if kind in ("csv", "tsv"):
        # Every column as text: a key such as 00012 must not turn into the number 12.
        names = pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(
            delimiter="\t" if kind == "tsv" else ","), read_options=pacsv.ReadOptions(block_size=1 << 20)
        ).column_names
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=True),
        )
    else:
        table = pajson.read_json(io.BytesIO(data))
    return table.select(columns) if columns is not None else table


def _table_shards(settings: BootstrapSettings) -> list[WorkShard]:
    fs, files = _list_files(settings.input)
    kinds = {f: (settings.input_format if settings.input_format != "auto" else TABLE_SUFFIXES.get(_suffix(f)))
             for f in files}
    files = [f for f in files if kinds[f] is not None]
    if not files:
        raise InputError(f"input: no Parquet, CSV, TSV or JSONL file at {settings.input}")
    shards: list[WorkShard] = []
    seen: set[str] = set()
    index = 0
    for path in files:
        table = read_table(fs, path, kinds[path])
        for col in (settings.url_col, settings.caption_col, settings.key_col):
            if col is not None and col not in table.column_names:
                raise InputError(f"input: {path} has no column '{col}' (columns: {table.column_names})")
        bad: list[int] = []
        if settings.key_col is not None:
            for i, key in enumerate(table.column(settings.key_col).cast(pa.string()).to_pylist()):
                if key is None or key in seen:
                    bad.append(index + i)
                else:
                    seen.add(key)
        for start in range(0, table.num_rows, settings.shard_size):
            stop = min(start + settings.shard_size, table.num_rows)
            lo, hi = index + start, index + stop
            shards.append(WorkShard(len(shards), kinds[path], fs.unstrip_protocol(path), start, stop, lo,
                                    tuple(i for i in bad if lo <= i < hi)))
        index += table.num_rows
    return shards


def _i2d_shards(settings: BootstrapSettings) -> list[WorkShard]:
    fs, files = _list_files(settings.input)
    tars = [f for f in files if f.endswith(".tar")]
    if tars:
        chosen, kind = tars, "i2d_wds"
    else:
        chosen, kind = [], "i2d_parquet"
        for f in files:
            if f.endswith(".parquet") and any(c in pq.read_schema(fs.open(f, "rb")).names for c in I2D_IMAGE_COLUMNS):
                chosen.append(f)
    if not chosen:
        raise InputError(f"input: no img2dataset tar or image parquet at {settings.input}")
    shards: list[WorkShard] = []
    for path in chosen:
        n = _i2d_rows(fs, path, kind)
        if n:  # an empty shard has nothing to account for
            shards.append(WorkShard(len(shards), kind, fs.unstrip_protocol(path), 0, n, 0))
    return shards


def _i2d_rows(fs: fsspec.AbstractFileSystem, path: str, kind: str) -> int:
    """Rows of one img2dataset shard: its metadata parquet lists every sample, failures too."""
    meta = path[: -len(".tar")] + ".parquet" if kind == "i2d_wds" else path
    if fs.exists(meta):
        with fs.open(meta, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return len({m.name.rpartition(".")[0] for m in tar if m.name.rpartition(".")[2] in I2D_IMAGE_COLUMNS})


def plan_shards(settings: BootstrapSettings) -> list[WorkShard]:
    """The deterministic list of work shards for this input."""
    if detect_format(settings) == "img2dataset":
        return _i2d_shards(settings)
    return _table_shards(settings)


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "url missing"
    if not url.lower().startswith(("http://", "https://")):
        return f"url scheme not http(s): {url[:80]}"
    return None


def _read_table_shard(shard: WorkShard, settings: BootstrapSettings) -> dict[str, list]:
    fs, path = fsspec.core.url_to_fs(shard.path)
    cols = [settings.url_col, settings.caption_col] + ([settings.key_col] if settings.key_col else [])
    table = read_table(fs, path, shard.kind, list(dict.fromkeys(cols))).slice(shard.start, shard.stop - shard.start)
    urls = table.column(settings.url_col).to_pylist()
    captions = table.column(settings.caption_col).cast(pa.string()).to_pylist()
    keys = (table.column(settings.key_col).cast(pa.string()).to_pylist() if settings.key_col
            else [None] * table.num_rows)
    bad_keys = set(shard.bad_keys)
    rows: dict[str, list] = {name: [] for name in WORK_SCHEMA.names}
    for i in range(table.num_rows):
        index = shard.first_index + i
        derived = f"{index:0{KEY_WIDTH}d}"
        key, error = (keys[i], None) if settings.key_col else (derived, None)
        if index in bad_keys:
            # keep keys unique: a null or repeated key gets the row's position appended
            key, error = f"{keys[i] or ''}~row{derived}", "key missing or repeated"
        error = error or _url_problem(urls[i])
        rows["key"].append(key)
        rows["url"].append(urls[i] if isinstance(urls[i], str) else None)
        rows["web_caption"].append(captions[i])
        rows["shard"].append(shard.shard)
        rows["status"].append(BAD_ROW if error else PENDING)
        rows["error"].append(error)
        rows["image"].append(None)
    return rows


def _read_i2d_shard(shard: WorkShard) -> dict[str, list]:
    """One img2dataset shard: its metadata parquet lists every sample, failures included."""
    fs, path = fsspec.core.url_to_fs(shard.path)
    images: dict[str, bytes] = {}
    if shard.kind == "i2d_wds":
        meta_path = path[: -len(".tar")] + ".parquet"
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if ext in I2D_IMAGE_COLUMNS:
                    images[stem] = tar.extractfile(member).read()
        meta = pq.read_table(fs.open(meta_path, "rb")).to_pylist() if fs.exists(meta_path) else [
            {"key": k, "status": "success"} for k in sorted(images)]
    else:
        meta = pq.read_table(fs.open(path, "rb")).to_pylist()
        for row in meta:
            blob = next((row.get(c) for c in I2D_IMAGE_COLUMNS if row.get(c) is not None), None)
            if blob is not None:
                images[row["key"]] = blob
    rows: dict[str, list] = {name: [] for name in WORK_SCHEMA.names}
    for row in meta:
        key = row["key"]
        ok = row.get("status") == "success" and key in images
        status = PENDING if ok else (DECODE_ERROR if row.get("status") == "failed_to_resize" else DOWNLOAD_ERROR)
        rows["key"].append(key)
        rows["url"].append(row.get("url"))
        rows["web_caption"].append(row.get("caption"))
        rows["shard"].append(shard.shard)
        rows["status"].append(status)
        rows["error"].append(None if ok else (row.get("error_message") or "no image in img2dataset output"))
        rows["image"].append(images.get(key) if ok else None)
    return rows


def read_shard(shard: WorkShard, settings: BootstrapSettings) -> pa.Table:
    """Every row of one work shard, in WORK_SCHEMA."""
    rows = _read_i2d_shard(shard) if shard.kind.startswith("i2d_") else _read_table_shard(shard, settings)
    return pa.Table.from_pydict(rows, schema=WORK_SCHEMA)


class ShardReader:
    """Ray Data stage: a batch of shard descriptors in, their rows out."""

    def __init__(self, settings: BootstrapSettings):
        self.settings = settings

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["shard"])
        shards = [WorkShard(**{k: _plain(batch[k][i]) for k in batch}) for i in range(n)]
        return pa.concat_tables([read_shard(s, self.settings) for s in shards])


def _plain(value: Any) -> Any:
    """numpy scalars/arrays from a Ray batch back to the Python values WorkShard holds."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return tuple(value) if isinstance(value, list) else value


def plan_fingerprint(shards: list[WorkShard]) -> str:
    """What a resumed run must find unchanged."""
    return json.dumps([s.to_dict() for s in shards], sort_keys=True)
