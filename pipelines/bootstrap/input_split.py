"""Split CSV/TSV/JSONL files (and Parquet whose row groups exceed a shard) once into Parquet pieces.

These formats have no metadata to plan from: counting rows means reading the file, and a shard
that wanted rows 3000-4000 of a 3M-row CSV would have to parse everything before them. So, as
img2dataset's reader does, each file is read once, by one Ray task that streams it and writes
Parquet pieces of `shard_size` rows, with only the columns the job needs, to OUT/_work/input:

    _work/input/00003/00000.parquet   file 3's rows 0..shard_size-1
    _work/input/00003.json            file 3's record: which file (size, ETag/mtime), its pieces
                                      and their row counts; written last

The names depend only on the file's position in the sorted input, so a task that is run again
writes the same objects; a record that exists and names the same file and settings means its
split finished, and --resume reuses it. Only the records (a few hundred bytes) reach the driver.

CSV/TSV values are all read as text (a key 00012 stays "00012"). JSONL is parsed line by line in
Python: pyarrow's JSON reader refuses a column whose type changes between blocks (an id that is a
number here and text there), and a web corpus has such columns. A line that cannot be parsed is
not lost: it becomes a row whose `_bad` column says why, and the reader makes it a bad_row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray

from pipelines.bootstrap.layout import INPUT
from pipelines.bootstrap.parquet_ranges import open_exact, parquet_reader
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.storage import Storage

BAD = "_bad"  # a piece's column: why the row could not be read (null for a good row)
BLOCK = 1 << 22  # bytes per read while streaming a file
HEAD = 1 << 16  # bytes first read of a CSV, to find its header


@dataclass(frozen=True)
class SplitJob:
    file_index: int  # position in the sorted input: names its pieces
    url: str
    size: int
    version: str
    kind: str  # csv | tsv | jsonl | parquet
    columns: tuple[str, ...]  # the needed columns, in order
    text: tuple[str, ...]  # those read as text whatever their type: url, caption, key
    shard_size: int
    footer: bytes = b""  # a Parquet file's footer, already read by the planner

    def identity(self) -> dict[str, Any]:
        """What a finished split's record must match to be reused (JSON-shaped)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "footer"}


def record_path(file_index: int) -> str:
    return f"{INPUT}/{file_index:05d}.json"


def piece_path(file_index: int, piece: int) -> str:
    return f"{INPUT}/{file_index:05d}/{piece:05d}.parquet"


class ColumnTypes:
    """Columns' types across files or pieces: the type where they agree, else string."""

    def __init__(self, names: list[str]):
        self.names, self.types = names, {}

    def add(self, schema: pa.Schema) -> None:
        for name in self.names:
            if name in schema.names and not pa.types.is_null(t := schema.field(name).type):
                self.types[name] = t if self.types.get(name, t) == t else pa.string()

    def schema(self) -> pa.Schema:
        return pa.schema([(n, self.types.get(n, pa.string())) for n in self.names])


def split_inputs(jobs: list[SplitJob], settings: BootstrapSettings, storage: Storage) -> list[dict[str, Any]]:
    """Each job's record, in order: a finished split's as it is, the others split now, one Ray
    task per file, all at once."""
    records: list[dict[str, Any] | None] = [_finished(storage, job) for job in jobs]
    todo = [i for i, record in enumerate(records) if record is None]
    refs = [_split_task.remote(jobs[i], settings.storage_options, storage) for i in todo]
    for i, record in zip(todo, ray.get(refs)):
        records[i] = record
    return records  # type: ignore[return-value]


def _finished(storage: Storage, job: SplitJob) -> dict[str, Any] | None:
    try:
        record = json.loads(storage.get(record_path(job.file_index)))
    except FileNotFoundError:
        return None
    return record if record.get("job") == job.identity() else None


@ray.remote(num_cpus=1)
def _split_task(job: SplitJob, storage_options: dict[str, dict[str, Any]], storage: Storage) -> dict[str, Any]:
    return split_file(job, storage_options, storage)


def split_file(job: SplitJob, storage_options: dict[str, dict[str, Any]], storage: Storage) -> dict[str, Any]:
    """Stream one input file into pieces; its record (not written when a column is missing)."""
    seen: set[str] = set()
    with open_exact(job.url, storage_options) as f:
        tables = {"parquet": _parquet_tables, "jsonl": _jsonl_tables}.get(job.kind, _csv_tables)(f, job, seen)
        pieces, types = _write_pieces(tables, job, storage)
    # the pieces' column types (the planner types the carried output columns with them)
    schema = types.schema().serialize().to_pybytes().hex()
    record: dict[str, Any] = {"job": job.identity(), "pieces": pieces, "schema": schema}
    missing = [c for c in job.columns if c not in seen]
    if missing and (pieces or job.kind in ("csv", "tsv")) and seen:
        # an empty file has no columns to miss; a CSV with a header does
        return {**record, "missing": missing, "columns": sorted(seen)}
    storage.put(record_path(job.file_index), json.dumps(record, sort_keys=True).encode())
    return record


def _write_pieces(tables: Iterator[pa.Table], job: SplitJob, storage: Storage
                  ) -> tuple[list[dict[str, Any]], ColumnTypes]:
    pieces: list[dict[str, Any]] = []
    types = ColumnTypes(list(job.columns))

    def write(table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.put(piece_path(job.file_index, len(pieces)), buf.getvalue())
        pieces.append({"path": piece_path(job.file_index, len(pieces)), "rows": table.num_rows})
        types.add(table.schema)

    buffer: list[pa.Table] = []
    buffered = 0
    for table in tables:
        buffer.append(table)
        buffered += table.num_rows
        while buffered >= job.shard_size:
            whole = pa.concat_tables(buffer)
            write(whole.slice(0, job.shard_size))
            rest = whole.slice(job.shard_size)
            buffer, buffered = ([rest] if rest.num_rows else []), rest.num_rows
    if buffered:
        write(pa.concat_tables(buffer))
    return pieces, types


def _unreadable(schema: pa.Schema, reasons: list[str]) -> pa.Table:
    """Rows standing for what could not be read: every column null but `_bad`."""
    columns = {f.name: pa.nulls(len(reasons), f.type) for f in schema if f.name != BAD}
    return pa.table({**columns, BAD: pa.array(reasons, pa.string())})


def cannot_read(exc: BaseException) -> str:
    """The reason given to rows that could not be read. The same input must give the same text on
    every run (a resumed run writes the rest of the output): object addresses are dropped."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return re.sub(r" object at 0x[0-9a-fA-F]+", "", f"cannot read input: {type(exc).__name__}: {text}")[:300]


def _parquet_tables(f: Any, job: SplitJob, seen: set[str]) -> Iterator[pa.Table]:
    pf = parquet_reader(f, job.footer or None)
    seen.update(pf.schema_arrow.names)
    schema = pa.schema([pf.schema_arrow.field(c) for c in job.columns] + [(BAD, pa.string())])
    try:
        for batch in pf.iter_batches(batch_size=min(job.shard_size, 1 << 16), columns=list(job.columns)):
            yield pa.Table.from_batches([batch]).append_column(BAD, pa.nulls(batch.num_rows, pa.string()))
    except (pa.ArrowException, OSError) as exc:
        yield _unreadable(schema, [cannot_read(exc)])


class _Prefixed(io.RawIOBase):
    """The bytes already read (`head`), then the rest of the file: the header is found without
    reading the start of the file twice."""

    def __init__(self, head: bytes, f: Any):
        self.head, self.pos, self.f = head, 0, f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.pos < len(self.head):
            n = min(len(b), len(self.head) - self.pos)
            b[:n] = self.head[self.pos:self.pos + n]
            self.pos += n
            return n
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)


def _csv_header(f: Any, delimiter: str) -> tuple[bytes, list[str]]:
    head = b""
    while True:
        chunk = f.read(HEAD)
        head += chunk
        if not chunk or b"\n" in head:
            break
    if not head.strip():
        return head, []
    text = head.decode("utf-8-sig", errors="replace")
    return head, next(csv.reader(io.StringIO(text), delimiter=delimiter))


def _csv_tables(f: Any, job: SplitJob, seen: set[str]) -> Iterator[pa.Table]:
    delimiter = "\t" if job.kind == "tsv" else ","
    head, names = _csv_header(f, delimiter)
    seen.update(names)
    if not names or any(c not in names for c in job.columns):
        return
    schema = pa.schema([(c, pa.string()) for c in job.columns] + [(BAD, pa.string())])
    malformed: list[str] = []

    def on_invalid(row: Any) -> str:
        # the row is skipped by the parser; it comes back as a bad row after its block's rows
        malformed.append(f"malformed {job.kind.upper()} row: {row.actual_columns} fields where the header "
                         f"has {row.expected_columns}")
        return "skip"

    try:
        reader = pacsv.open_csv(
            _Prefixed(head, f), read_options=pacsv.ReadOptions(block_size=BLOCK, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                              invalid_row_handler=on_invalid),
            # read as bytes: as text, one invalid UTF-8 byte fails its whole block (thousands of rows)
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in job.columns},
                                                 include_columns=list(job.columns), strings_can_be_null=True))
        for batch in reader:
            yield _as_text(pa.Table.from_batches([batch]).select(list(job.columns)))
            if malformed:
                yield _unreadable(schema, malformed[:])
                malformed.clear()
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        yield _unreadable(schema, [*malformed, cannot_read(exc)])


def _as_text(table: pa.Table) -> pa.Table:
    """The binary columns of a CSV block as text, plus the BAD column: a value that is not valid
    UTF-8 makes its row a bad row (and is kept with the invalid bytes replaced), not its block."""
    columns: dict[str, pa.Array] = {}
    reasons: list[str | None] = [None] * table.num_rows
    for name in table.column_names:
        values = table.column(name)
        try:
            columns[name] = values.cast(pa.string())  # validates the UTF-8 of the whole column
            continue
        except pa.ArrowInvalid:
            pass
        texts = []
        for i, value in enumerate(values.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(value.decode("utf-8", errors="replace"))
                reasons[i] = reasons[i] or f"invalid UTF-8 in column '{name}'"
        columns[name] = pa.array(texts, pa.string())
    return pa.table({**columns, BAD: pa.array(reasons, pa.string())})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else json.dumps(value)


def _lines(f: Any) -> Iterator[bytes]:
    rest = b""
    while chunk := f.read(BLOCK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _jsonl_tables(f: Any, job: SplitJob, seen: set[str]) -> Iterator[pa.Table]:
    """One table per piece: a carried column's type is inferred per piece, never across a block."""
    rows: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    for line in _lines(f):
        if not line.strip():
            continue  # JSON Lines allows blank lines; they are no rows
        try:
            obj = json.loads(line)
            reason = None if isinstance(obj, dict) else "row is not a JSON object"
        except ValueError:
            obj, reason = None, "row is not valid JSON"
        obj = obj if reason is None else {}
        seen.update(obj)
        rows.append(obj)
        reasons.append(reason)
        if len(rows) == job.shard_size:
            yield _json_table(rows, reasons, job)
            rows, reasons = [], []
    if rows:
        yield _json_table(rows, reasons, job)


def _json_table(rows: list[dict[str, Any]], reasons: list[str | None], job: SplitJob) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for name in job.columns:
        values = [row.get(name) for row in rows]
        if name in job.text:  # carried columns keep their type
            columns[name] = pa.array([_text(v) for v in values], pa.string())
            continue
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowException, OverflowError, TypeError):  # mixed types: each value as JSON text
            columns[name] = pa.array([_text(v) for v in values], pa.string())
    return pa.table({**columns, BAD: pa.array(reasons, pa.string())})
