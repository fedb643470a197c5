"""Plan the input into deterministic work shards, from metadata where the format has it.

The input is read once. The driver never holds rows: it lists files and reads Parquet footers
(with two exact reads each, parquet_ranges.py); a work shard then reads only its own rows and only
the columns the job needs.

    Parquet                 runs of consecutive whole row groups of <= shard_size rows, never
                            crossing a file; each shard carries its row groups' footer
    CSV/TSV/JSONL, and      split once by Ray tasks into Parquet pieces of shard_size rows under
    Parquet whose row       OUT/_work/input (input_split.py); one shard per piece; --resume reuses
    groups are too large    a finished split
    img2dataset output      one shard per tar (or per image Parquet), rows from its metadata Parquet
    capfilt output          one shard per committed shard of a bootstrap output (--download-only,
                            or written with --parquet-images): `capfilt rounds` fetches the web
                            once and bootstraps every round from it

Shards are numbered 0..N-1 in input order (files sorted), and every row has a global index in
that order: derived keys and "first occurrence" of a repeated key come from it, so the plan comes
out the same on every run and a resumed run reads the same rows into the same shards.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import fsspec
import pyarrow as pa

from pipelines.bootstrap.input_keys import RepeatedKeys, find_repeated_keys
from pipelines.bootstrap.input_split import ColumnTypes, SplitJob, split_inputs
from pipelines.bootstrap.layout import DONE, INPUT, MANIFEST, PARQUET, RUN_FILE, WEBDATASET, OutputLayout
from pipelines.bootstrap.parquet_ranges import FooterError, FooterSlicer, footer_metadata, read_footer
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.storage import Storage, open_fs

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
I2D_IMAGE_COLUMNS = ("jpg", "png", "webp")
CAPFILT_COLUMNS = ("key", "url", "web_caption", "status", "error")
# Settings that shape what is read, and so what --resume must find unchanged.
READING_SETTINGS = ("input_format", "url_col", "caption_col", "key_col", "save_additional_columns", "shard_size")
FOOTER_THREADS = 16  # footers are small reads whose latency (object storage) dominates


class InputError(ValueError):
    """The input cannot be planned (nothing found, a missing column, ...); raised before any work."""


@dataclass(frozen=True)
class WorkShard:
    """One unit of work and of resume; small and flat, so that it travels as a Ray Data row."""

    shard: int  # 0..N-1, in input order
    rows: int  # rows this shard yields, exactly
    kind: str  # parquet | piece | i2d_wds | i2d_parquet | capfilt
    path: str  # URL of the Parquet file its rows come from ("" for an img2dataset tar without one)
    first_index: int  # global index of its first row
    rg_start: int = 0  # its row groups in `path`: [rg_start, rg_stop)
    rg_stop: int = 0
    footer: bytes = b""  # the Parquet footer of just those row groups; b"": read the file's own
    images: str = ""  # URL of the tar holding the images (img2dataset, capfilt output)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> WorkShard:
        """From a Ray Data row or batch slice, whose values are numpy scalars."""
        values = {}
        for f in fields(cls):
            value = row[f.name]
            value = value.item() if hasattr(value, "item") and not isinstance(value, (bytes, str)) else value
            values[f.name] = {"int": int, "str": str, "bytes": bytes}[f.type](value if value is not None else b"")
        return cls(**values)


@dataclass(frozen=True)
class InputPlan:
    shards: list[WorkShard]
    fingerprint: str  # what --resume must find unchanged: the input's files and the shard cuts
    duplicates: RepeatedKeys | None  # repeated --key-col values (None without --key-col)
    extra_schema: pa.Schema  # the carried columns (--save-additional-columns) and their types

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


@dataclass(frozen=True)
class InputFile:
    url: str
    size: int
    version: str  # ETag or mtime: what changes when the content does
    kind: str = ""


@dataclass(frozen=True)
class _Source:
    kind: str  # tables | img2dataset | capfilt
    fs: fsspec.AbstractFileSystem
    files: list[InputFile]


# -- listing ------------------------------------------------------------------------------


def _version(info: dict[str, Any]) -> str:
    for name in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(name) is not None:
            return str(info[name])
    return ""


def _suffix(name: str) -> str:
    return name[name.rfind("."):].lower() if "." in name else ""


def _hidden(path: str, root: str) -> bool:
    """Spark's _SUCCESS, .crc files and the like: no part of the data."""
    rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _file_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """fs.info of a file; None for a folder or nothing. Asked before isdir, and instead of isfile:
    fsspec's http:// answers both of those with a GET of the whole file, info with one HEAD."""
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return info if info.get("type") == "file" else None


def _list(fs: fsspec.AbstractFileSystem, path: str, spec: str) -> list[tuple[str, dict[str, Any]]]:
    if any(ch in path for ch in "*?["):
        found = fs.glob(path, detail=True)
        root = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    elif (info := _file_info(fs, path)) is not None:
        return [(path, info)]
    elif fs.isdir(path):
        found, root = fs.find(path, detail=True), path
    else:
        raise InputError(f"input: nothing found at {spec}")
    return sorted((p, i) for p, i in found.items() if i.get("type") != "directory" and not _hidden(p, root))


def _is_capfilt_output(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    if any(ch in path for ch in "*?[") or _file_info(fs, path) is not None or not fs.isdir(path):
        return False
    return fs.isdir(f"{path}/{DONE}") or (fs.isfile(f"{path}/{MANIFEST}") and fs.isdir(f"{path}/{PARQUET}")
                                          and fs.isdir(f"{path}/{WEBDATASET}"))


def _source(settings: BootstrapSettings) -> _Source:
    fs, path = open_fs(settings.input, settings.storage_options)
    path = path.rstrip("/") or path

    def entry(p: str, info: dict[str, Any], kind: str = "") -> InputFile:
        return InputFile(fs.unstrip_protocol(p), int(info.get("size") or 0), _version(info), kind)

    if settings.input_format in ("auto", "img2dataset") and _is_capfilt_output(fs, path):
        # only what a committed shard can name; parts and temp files of a live run do not count
        listed = [entry(p, i) for folder in (PARQUET, WEBDATASET, DONE) if fs.isdir(f"{path}/{folder}")
                  for p, i in sorted(fs.find(f"{path}/{folder}", detail=True).items())]
        return _Source("capfilt", fs, listed)
    found = _list(fs, path, settings.input)
    names = [p.rsplit("/", 1)[-1] for p, _ in found]
    if settings.input_format == "img2dataset" or (settings.input_format == "auto" and any(
            n.endswith((".tar", "_stats.json")) for n in names)):
        return _Source("img2dataset", fs, [entry(p, i) for p, i in found])
    files = []
    for p, info in found:
        kind = settings.input_format if settings.input_format != "auto" else TABLE_SUFFIXES.get(_suffix(p))
        if kind is not None:
            files.append(entry(p, info, kind))
    if not files:
        raise InputError(f"input: no Parquet, CSV, TSV or JSONL file at {settings.input}")
    return _Source("tables", fs, files)


def _fingerprint_of(source: _Source, settings: BootstrapSettings) -> str:
    payload = {"kind": source.kind, "files": [asdict(f) for f in source.files],
               "settings": {name: getattr(settings, name) for name in READING_SETTINGS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def input_fingerprint(settings: BootstrapSettings) -> str:
    """The input's files (names, sizes, ETags or mtimes) and the settings that shape reading:
    a listing, no file is opened and Ray is not needed."""
    return _fingerprint_of(_source(settings), settings)


# -- Parquet footers ------------------------------------------------------------------------


def _footers(source: _Source, urls: list[str]) -> list[tuple[bytes, Any]]:
    """(footer bytes, FileMetaData) of each Parquet file, read concurrently with exact reads."""
    sizes = {f.url: f.size for f in source.files}

    def one(url: str) -> tuple[bytes, Any]:
        path = source.fs._strip_protocol(url)
        try:
            with source.fs.open(path, "rb", cache_type="none") as f:
                footer = read_footer(f, sizes.get(url) or source.fs.size(path))
            return footer, footer_metadata(footer)
        except (FooterError, OSError, pa.ArrowException) as exc:
            raise InputError(f"input: cannot read the Parquet footer of {url}: {exc}") from None

    with ThreadPoolExecutor(max_workers=FOOTER_THREADS) as pool:
        return list(pool.map(one, urls))


def _check_columns(url: str, present: list[str], wanted: list[str]) -> None:
    for column in wanted:
        if column not in present:
            raise InputError(f"input: {url} has no column '{column}' (columns: {present})")


def _needed(settings: BootstrapSettings) -> list[str]:
    cols = [settings.url_col, settings.caption_col, settings.key_col, *settings.save_additional_columns]
    return list(dict.fromkeys(c for c in cols if c))


def _row_group_runs(sizes: list[int], limit: int) -> list[tuple[int, int, int]]:
    """(start, stop, rows) of runs of consecutive row groups holding <= limit rows each."""
    runs, start, rows = [], 0, 0
    for i, n in enumerate(sizes):
        if rows and rows + n > limit:
            runs.append((start, i, rows))
            start, rows = i, 0
        rows += n
    if rows:
        runs.append((start, len(sizes), rows))
    return runs


def _plan_tables(source: _Source, settings: BootstrapSettings, layout: OutputLayout
                 ) -> tuple[list[WorkShard], pa.Schema]:
    needed, types = _needed(settings), ColumnTypes(list(settings.save_additional_columns))
    text = tuple(c for c in (settings.url_col, settings.caption_col, settings.key_col) if c)
    parquet = [f for f in source.files if f.kind == "parquet"]
    footers = dict(zip((f.url for f in parquet), _footers(source, [f.url for f in parquet])))
    runs: dict[str, list[tuple[int, int, int]]] = {}
    jobs: list[SplitJob] = []
    for i, file in enumerate(source.files):
        if file.kind == "parquet":
            meta = footers[file.url][1]
            schema = meta.schema.to_arrow_schema()
            _check_columns(file.url, schema.names, needed)
            types.add(schema)
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            if max(sizes, default=0) <= settings.shard_size:
                runs[file.url] = _row_group_runs(sizes, settings.shard_size)
                continue
            # a row group larger than a shard: several shards would each read all of it
        jobs.append(SplitJob(i, file.url, file.size, file.version, file.kind, tuple(needed), text,
                             settings.shard_size, footers[file.url][0] if file.kind == "parquet" else b""))
    records = {job.url: record for job, record in zip(jobs, split_inputs(jobs, settings, layout.storage))}
    shards: list[WorkShard] = []
    index = 0
    for file in source.files:
        if file.url in runs:
            slicer = FooterSlicer(footers[file.url][0])
            for start, stop, rows in runs[file.url]:
                shards.append(WorkShard(len(shards), rows, "parquet", file.url, index, start, stop,
                                        slicer.slice(start, stop, rows)))
                index += rows
            continue
        record = records[file.url]
        if record.get("missing"):
            _check_columns(file.url, record["columns"], needed)
        types.add(pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(record["schema"]))))
        for piece in record["pieces"]:
            shards.append(WorkShard(len(shards), piece["rows"], "piece", layout.storage.uri(piece["path"]), index))
            index += piece["rows"]
    return shards, types.schema()


# -- img2dataset and capfilt outputs ----------------------------------------------------------


def _plan_i2d(source: _Source, settings: BootstrapSettings) -> tuple[list[WorkShard], pa.Schema]:
    urls = {f.url for f in source.files}
    tars = [f.url for f in source.files if f.url.endswith(".tar")]
    if tars:  # img2dataset's webdataset output: a tar and its metadata Parquet per shard
        metas = [t[: -len(".tar")] + ".parquet" for t in tars]
        pairs = [(m if m in urls else "", t, "i2d_wds") for m, t in zip(metas, tars)]
        with_meta = [m for m, _, _ in pairs if m]
        footers = dict(zip(with_meta, _footers(source, with_meta)))
    else:  # its parquet output: the images in the Parquet files
        candidates = [f.url for f in source.files if f.url.endswith(".parquet")]
        footers = dict(zip(candidates, _footers(source, candidates)))
        pairs = [(u, "", "i2d_parquet") for u in candidates
                 if set(I2D_IMAGE_COLUMNS) & set(footers[u][1].schema.to_arrow_schema().names)]
    if not pairs:
        raise InputError(f"input: no img2dataset tar or image parquet at {settings.input}")
    types = ColumnTypes(list(settings.save_additional_columns))
    shards: list[WorkShard] = []
    index = 0
    for meta_url, tar_url, kind in pairs:
        if meta_url:
            footer, meta = footers[meta_url]
            schema = meta.schema.to_arrow_schema()
            _check_columns(meta_url, schema.names, list(settings.save_additional_columns))
            types.add(schema)
            rows, groups = meta.num_rows, meta.num_row_groups
        else:  # a tar without its metadata Parquet: its images are its rows
            if settings.save_additional_columns:
                raise InputError(f"input: {tar_url} has no metadata Parquet to carry columns from")
            footer, groups, rows = b"", 0, _count_tar_images(source, tar_url)
        if rows:  # an empty shard has nothing to account for
            shards.append(WorkShard(len(shards), rows, kind, meta_url, index, 0, groups, footer, tar_url))
            index += rows
    return shards, types.schema()


def _count_tar_images(source: _Source, tar_url: str) -> int:
    with source.fs.open(source.fs._strip_protocol(tar_url), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return len({m.name.rpartition(".")[0] for m in tar if m.name.rpartition(".")[2] in I2D_IMAGE_COLUMNS})


def _written_download_only(storage: Storage) -> bool | None:
    """What the folder's manifest (or, for an unfinished run, its run record) says."""
    for rel in (MANIFEST, RUN_FILE):
        if storage.exists(rel):
            value = json.loads(storage.get(rel)).get("settings", {}).get("download_only")
            if value is not None:
                return bool(value)
    return None


def _plan_capfilt(source: _Source, settings: BootstrapSettings) -> tuple[list[WorkShard], pa.Schema]:
    storage = Storage(settings.input, settings.storage_options)
    markers = list(OutputLayout(storage).markers())
    if not markers:
        raise InputError(f"input: {settings.input} is a capfilt output without any committed shard")
    urls = [storage.uri(marker["files"]["parquet"]) for _, marker in markers]
    footers = _footers(source, urls)
    download_only = _written_download_only(storage)
    types = ColumnTypes(list(settings.save_additional_columns))
    shards: list[WorkShard] = []
    index = 0
    for (_, marker), url, (footer, meta) in zip(markers, urls, footers):
        schema = meta.schema.to_arrow_schema()
        _check_columns(url, schema.names, [*CAPFILT_COLUMNS, *settings.save_additional_columns])
        if "image" not in schema.names and not download_only:
            raise InputError(
                f"input: {settings.input} is a capfilt bootstrap output that was not written with "
                f"--download-only and has no image column: its tars hold caption pairs, not one image per "
                f"row. Bootstrap from a --download-only output (or one written with --parquet-images).")
        types.add(schema)
        tar = marker["files"].get("webdataset")
        if meta.num_rows:
            shards.append(WorkShard(len(shards), meta.num_rows, "capfilt", url, index, 0, meta.num_row_groups,
                                    footer, storage.uri(tar) if tar else ""))
            index += meta.num_rows
    return shards, types.schema()


# -- the plan --------------------------------------------------------------------------------


def plan_input(settings: BootstrapSettings, layout: OutputLayout) -> InputPlan:
    """The deterministic work shards of this input. Ray must be initialised: CSV/TSV/JSONL are
    split by Ray tasks, and repeated --key-col values are found by a distributed pass."""
    source = _source(settings)
    if source.kind == "capfilt":
        shards, extra_schema = _plan_capfilt(source, settings)
    elif source.kind == "img2dataset":
        shards, extra_schema = _plan_i2d(source, settings)
    else:
        shards, extra_schema = _plan_tables(source, settings, layout)
    # keys of img2dataset and capfilt outputs are theirs, already unique
    duplicates = find_repeated_keys(shards, settings) if settings.key_col and source.kind == "tables" else None
    # pieces by their place in the output, not its URL: a copied or moved output resumes as well
    cuts = [(s.kind, s.path.rsplit(f"/{INPUT}/", 1)[-1] if s.kind == "piece" else s.path, s.rg_start, s.rg_stop,
             s.rows, s.first_index) for s in shards]
    fingerprint = hashlib.sha256(json.dumps([_fingerprint_of(source, settings), cuts]).encode()).hexdigest()
    return InputPlan(shards, fingerprint, duplicates, extra_schema)
