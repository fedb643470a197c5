"""Ranged Parquet reads: a footer with two exact reads, cut down to a run of row groups, and
then only those row groups' column chunks.

A work shard reads a few row groups of a large Parquet file. Left to itself, pyarrow opens the
file by reading its footer (and 64 KiB speculatively) before the row groups: with N shards per
file that is N footer reads, and a footer grows with the number of row groups, so the bytes read
grow as N^2. Instead the planner reads each footer once and gives every shard the footer of its
own row groups only (a few hundred bytes per row group); the shard hands it to pyarrow as the
file's metadata and reads nothing but its column chunks.

pyarrow has no call that subsets a FileMetaData, so the footer's Thrift (compact protocol) bytes
are cut here: the top-level fields are copied as they are, `num_rows` is rewritten and the
`row_groups` list keeps only the chosen elements. Column offsets in the footer are absolute, so
the cut footer reads the same bytes of the same file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.bootstrap.storage import open_fs

MAGIC = b"PAR1"
_NUM_ROWS, _ROW_GROUPS = 3, 4  # FileMetaData's field ids (parquet.thrift)
_STOP, _BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT, _UUID = range(14)


class FooterError(ValueError):
    """The bytes are not a plain (unencrypted) Parquet footer."""


def read_footer(f: BinaryIO, size: int) -> bytes:
    """The footer's Thrift bytes: the last 8 bytes give its length, then exactly that is read."""
    if size < 12:
        raise FooterError(f"{size} bytes is too small for a Parquet file")
    f.seek(size - 8)
    tail = f.read(8)
    if tail[4:] != MAGIC:
        raise FooterError("not a Parquet file (no PAR1 at its end)")
    length = int.from_bytes(tail[:4], "little")
    if length > size - 12:
        raise FooterError(f"footer length {length} exceeds the file")
    f.seek(size - 8 - length)
    footer = f.read(length)
    if len(footer) != length:
        raise FooterError("file shorter than its footer says")
    return footer


def footer_metadata(footer: bytes) -> pq.FileMetaData:
    """pyarrow's FileMetaData of footer bytes (wrapped as the tail of a file, which is all it reads)."""
    return pq.read_metadata(pa.BufferReader(MAGIC + footer + len(footer).to_bytes(4, "little") + MAGIC))


class _Compact:
    """Just enough of Thrift's compact protocol to find where each value starts and ends."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise FooterError("footer ends inside a value")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def field_header(self, last_id: int) -> tuple[int, int]:
        """(field id, type) of the next field; type _STOP at the struct's end."""
        b = self.byte()
        if b == _STOP:
            return 0, _STOP
        delta, kind = b >> 4, b & 0x0F
        if delta == 0:
            raw = self.varint()
            return (raw >> 1) ^ -(raw & 1), kind
        return last_id + delta, kind

    def list_header(self) -> tuple[int, int]:
        b = self.byte()
        size, kind = b >> 4, b & 0x0F
        return (self.varint() if size == 15 else size), kind

    def skip(self, kind: int, in_container: bool = False) -> None:
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            self.pos += 1 if in_container else 0  # a struct field's bool lives in its type nibble
        elif kind == _BYTE:
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _UUID:
            self.pos += 16
        elif kind == _BINARY:
            n = self.varint()
            self.pos += n
        elif kind in (_LIST, _SET):
            size, elem = self.list_header()
            for _ in range(size):
                self.skip(elem, in_container=True)
        elif kind == _MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(types >> 4, in_container=True)
                    self.skip(types & 0x0F, in_container=True)
        elif kind == _STRUCT:
            last = 0
            while True:
                last, t = self.field_header(last)
                if t == _STOP:
                    break
                self.skip(t)
        else:
            raise FooterError(f"unknown Thrift type {kind}")
        if self.pos > len(self.data):
            raise FooterError("footer ends inside a value")


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if not value:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _zigzag_varint(value: int) -> bytes:
    return _uvarint((value << 1) ^ (value >> 63))


class FooterSlicer:
    """Parses a footer once; `slice(start, stop, rows)` then costs only the bytes it copies."""

    def __init__(self, footer: bytes):
        self.footer = footer
        reader = _Compact(footer)
        self.fields: list[tuple[int, int, int, int]] = []  # (field id, header start, value start, end)
        self.groups: list[tuple[int, int]] = []  # (start, end) of each row group's struct
        last = 0
        while True:
            header = reader.pos
            last, kind = reader.field_header(last)
            if kind == _STOP:
                break
            value = reader.pos
            if last == _ROW_GROUPS:
                if kind != _LIST:
                    raise FooterError("row_groups is not a list")
                size, elem = reader.list_header()
                for _ in range(size):
                    begin = reader.pos
                    reader.skip(elem, in_container=True)
                    self.groups.append((begin, reader.pos))
            else:
                reader.skip(kind)
            self.fields.append((last, header, value, reader.pos))
        if not any(f[0] == _ROW_GROUPS for f in self.fields):
            raise FooterError("footer without row_groups")

    def slice(self, start: int, stop: int, rows: int) -> bytes:
        """The footer of row groups [start, stop) holding `rows` rows."""
        chosen = self.groups[start:stop]
        out = bytearray()
        for field_id, header, value, end in self.fields:
            if field_id == _NUM_ROWS:
                out += self.footer[header:value] + _zigzag_varint(rows)
            elif field_id == _ROW_GROUPS:
                n = len(chosen)
                out += self.footer[header:value]
                out += bytes([(n << 4) | _STRUCT]) if n < 15 else bytes([0xF0 | _STRUCT]) + _uvarint(n)
                for begin, finish in chosen:
                    out += self.footer[begin:finish]
            else:
                out += self.footer[header:end]
        return bytes(out + bytes([_STOP]))


def parquet_reader(f: Any, footer: bytes | None) -> pq.ParquetFile:
    """A ParquetFile over `f` that uses `footer` (if given) instead of reading the file's own.

    pre_buffer off: it coalesces the column chunks it reads across gaps of up to 8 KiB, and
    so reads the unneeded columns that lie between them; without it each chunk is one exact read."""
    return pq.ParquetFile(f, metadata=footer_metadata(footer) if footer else None, pre_buffer=False)


def open_exact(url: str, storage_options: dict[str, dict[str, Any]] | None):
    """`url` opened for reading without read-ahead: object storage serves the ranges asked, no more."""
    fs, path = open_fs(url, storage_options)
    return fs.open(path, "rb", cache_type="none")


def read_parquet(url: str, storage_options: dict[str, dict[str, Any]] | None, footer: bytes, rg_start: int,
                 rg_stop: int, columns: Iterable[str], optional: Iterable[str] = ()) -> pa.Table:
    """Row groups [rg_start, rg_stop) of a Parquet file (every row group when rg_stop is 0), only
    `columns` and those of `optional` that the file has; `footer` (if not empty) is the file's
    footer or one cut down to those row groups (FooterSlicer), and saves reading the file's own."""
    with open_exact(url, storage_options) as f:
        pf = parquet_reader(f, footer or None)
        names = pf.schema_arrow.names
        wanted = list(dict.fromkeys([*columns, *(c for c in optional if c in names)]))
        if rg_stop == 0:
            return pf.read(columns=wanted)
        # a cut footer numbers its row groups from 0; a whole one has them where they are (the two
        # agree when the run is the whole file, the only case where their counts are equal)
        count = rg_stop - rg_start
        groups = range(count) if pf.metadata.num_row_groups == count else range(rg_start, rg_stop)
        return pf.read_row_groups(groups, columns=wanted)
