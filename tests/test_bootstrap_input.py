"""The bootstrap's input side: planning from metadata, reading each row once, splitting text formats
once, repeated keys found by a distributed pass, carried columns, object storage, corrupt files and
a capfilt output as input. Real parts: local files, the loopback S3, a real local Ray."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import ClassVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from pipelines.bootstrap import input_keys
from pipelines.bootstrap.input_plan import InputError, InputPlan, WorkShard, input_fingerprint, plan_input
from pipelines.bootstrap.input_reader import MISSING_IMAGE, read_shard, read_shards
from pipelines.bootstrap.layout import OutputLayout, marker_path, shard_files
from pipelines.bootstrap.schema import OUTPUT_SCHEMA, WORK_SCHEMA
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_output import wds_key
from s3_server import S3_ENV, s3_server


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def settings(tmp_path: Path, input_: str, **kw) -> BootstrapSettings:
    return BootstrapSettings(input=input_, output=str(tmp_path / "out"), download_only=True, **kw)


def plan(s: BootstrapSettings) -> InputPlan:
    return plan_input(s, OutputLayout.at(s.output, s.storage_options))


def read_with_ray(p: InputPlan, s: BootstrapSettings) -> pa.Table:
    """The shards through Ray Data, as the graph reads them (WorkShard -> Ray row -> WorkShard)."""
    ds = ray.data.from_items([sh.to_dict() for sh in p.shards], override_num_blocks=len(p.shards))
    ds = ds.map_batches(read_shards, fn_kwargs={"settings": s, "duplicates": p.duplicates}, batch_size=1)
    table = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    # one block per shard: the order across shards is not the input's, so rows are compared sorted
    return table.sort_by([("shard", "ascending")])


def web_table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"url": [f"http://web/{i}.jpg" for i in range(start, start + n)],
                     "caption": [f"caption {i}" for i in range(start, start + n)],
                     "n": pa.array(range(start, start + n), pa.int64()),
                     "payload": [bytes([i % 251]) * 3000 for i in range(start, start + n)]})  # never needed


# -- Parquet: planned from the footer, each shard reads its row groups only ------------------------


class CountingFS(LocalFileSystem):
    """The local disk, recording every (path, offset, length) read through it."""

    protocol = ("countfs",)
    reads: ClassVar[list[tuple[str, int, int]]] = []

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return CountingFile(self._strip_protocol(path), mode, fs=self, **kwargs)


class CountingFile(LocalFileOpener):
    def read(self, *args, **kwargs):
        pos = self.tell()
        data = super().read(*args, **kwargs)
        CountingFS.reads.append((self.path, pos, len(data)))
        return data


@pytest.fixture
def counting():
    fsspec.register_implementation("countfs", CountingFS, clobber=True)
    CountingFS.reads.clear()
    return CountingFS.reads


def chunk_span(meta: pq.FileMetaData, group: int, column: int) -> tuple[int, int]:
    cc = meta.row_group(group).column(column)
    start = cc.dictionary_page_offset if cc.has_dictionary_page and cc.dictionary_page_offset else cc.data_page_offset
    return start, start + cc.total_compressed_size


def test_parquet_plan_reads_the_footer_only_and_a_shard_reads_only_its_row_groups(tmp_path, counting):
    path = tmp_path / "web.parquet"
    pq.write_table(web_table(25), path, row_group_size=4)  # row groups of 4,4,4,4,4,4,1
    size = path.stat().st_size
    footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
    s = settings(tmp_path, f"countfs://{path}", shard_size=10)
    p = plan(s)
    # whole row groups, at most shard_size rows each, and nothing but the footer read
    assert [(sh.rg_start, sh.rg_stop, sh.rows, sh.first_index) for sh in p.shards] == [
        (0, 2, 8, 0), (2, 4, 8, 8), (4, 7, 9, 16)]
    assert sorted((off, n) for _, off, n in counting if n) == [(size - 8 - footer, footer), (size - 8, 8)]

    meta = pq.read_metadata(path)
    counting.clear()
    table = read_shard(p.shards[1], s)
    assert table.schema == WORK_SCHEMA
    assert table.column("key").to_pylist() == [f"{i:010d}" for i in range(8, 16)]
    assert table.column("url").to_pylist() == [f"http://web/{i}.jpg" for i in range(8, 16)]
    assert set(table.column("status").to_pylist()) == {"pending"}
    # only url and caption (columns 0, 1) of row groups 2 and 3: never the payload, another
    # shard's row groups or the footer
    allowed = [chunk_span(meta, g, c) for g in (2, 3) for c in (0, 1)]
    data = [(off, n) for _, off, n in counting if n]
    assert data and all(any(lo <= off and off + n <= hi for lo, hi in allowed) for off, n in data), (data, allowed)
    assert sum(n for _, n in data) == sum(hi - lo for lo, hi in allowed)


def test_parquet_rows_through_ray_data_with_derived_keys(tmp_path):
    pq.write_table(web_table(7), tmp_path / "a.parquet", row_group_size=3)
    pq.write_table(web_table(5, start=7), tmp_path / "b.parquet", row_group_size=2)
    (tmp_path / "_SUCCESS").write_text("")  # Spark's marker is no input file
    s = settings(tmp_path, str(tmp_path), shard_size=4)
    p = plan(s)
    assert [sh.rows for sh in p.shards] == [3, 4, 4, 1] and p.rows == 12  # groups 3|3+1 and 2+2|1
    assert p.duplicates is None and len(p.extra_schema) == 0
    out = read_with_ray(p, s)
    assert out.num_rows == 12
    assert sorted(out.column("key").to_pylist()) == [f"{i:010d}" for i in range(12)]
    rows = {r["key"]: r for r in out.to_pylist()}
    assert rows["0000000009"]["web_caption"] == "caption 9" and rows["0000000009"]["_extra"] is None
    before = input_fingerprint(s)
    assert input_fingerprint(settings(tmp_path, str(tmp_path), shard_size=5)) != before
    pq.write_table(web_table(6), tmp_path / "a.parquet", row_group_size=3)
    assert input_fingerprint(s) != before and plan(s).fingerprint != p.fingerprint


# -- CSV / TSV / JSONL: split once ------------------------------------------------------------------


def write_text_inputs(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.csv").write_text(
        'url,caption,id,extra\n'
        'http://web/1.jpg,"two\nlines, and a comma",00012,x\n'
        'http://web/2.jpg,plain,00013,y\n'
        'http://web/3.jpg,too,many,fields,here\n'  # malformed: accounted for as a bad row
        'ftp://web/4.jpg,,00014,z\n'
        'http://web/5.jpg,"quoted ""q""",0015,w\n')
    (folder / "b.tsv").write_text("url\tcaption\tid\textra\n" + "".join(
        f"http://web/t{i}.jpg\ttab {i}\t{i:05d}\tt\n" for i in range(4)))
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"url": "http://web/j0.jpg", "caption": "j0", "id": 7, "extra": 1},
        {"url": "http://web/j1.jpg", "caption": "j1", "id": "a7", "extra": "text"},
        {"caption": "no url", "id": "a8"}]) + "\n{not json\n")


def test_text_formats_split_once_into_pieces_every_row_once(tmp_path):
    write_text_inputs(tmp_path / "in")
    s = settings(tmp_path, str(tmp_path / "in"), shard_size=3, key_col="id", save_additional_columns=["extra"])
    p = plan(s)
    assert {sh.kind for sh in p.shards} == {"piece"}
    # a.csv: 4 good rows + 1 malformed = 5 -> 3+2; b.tsv: 4 -> 3+1; c.jsonl: 4 -> 3+1
    assert [sh.rows for sh in p.shards] == [3, 2, 3, 1, 3, 1]
    assert all("/_work/input/" in sh.path for sh in p.shards)
    out = read_with_ray(p, s)
    rows = out.to_pylist()
    assert len(rows) == 13 and len({r["key"] for r in rows}) == 13
    by_key = {r["key"]: r for r in rows}
    assert by_key["00012"]["web_caption"] == "two\nlines, and a comma" and by_key["00012"]["status"] == "pending"
    assert by_key["0015"]["web_caption"] == 'quoted "q"'
    assert by_key["00014"]["status"] == "bad_row" and "scheme" in by_key["00014"]["error"]
    assert {"00000", "00003", "7", "a7"} <= set(by_key)  # TSV keys stay text; a JSON number becomes its text
    assert json.loads(by_key["00012"]["_extra"]) == {"extra": "x"}
    # a JSON column of mixed types (1 and "text") is carried as each value's JSON text
    assert [json.loads(by_key[k]["_extra"]) for k in ("7", "a7")] == [{"extra": "1"}, {"extra": "text"}]
    assert p.extra_schema == pa.schema([("extra", pa.string())])
    errors = sorted(r["error"] for r in rows if r["status"] == "bad_row")
    assert errors == ["malformed CSV row: 5 fields where the header has 4", "row is not valid JSON",
                      "url missing", "url scheme not http(s): ftp://web/4.jpg"]

    # --resume: the finished split is reused (same pieces, same plan); a changed file is split again
    out_dir = tmp_path / "out" / "_work" / "input"
    stamps = {q: q.stat().st_mtime_ns for q in out_dir.rglob("*.parquet")}
    again = plan(s)
    assert again.fingerprint == p.fingerprint
    assert {q: q.stat().st_mtime_ns for q in out_dir.rglob("*.parquet")} == stamps
    with open(tmp_path / "in" / "b.tsv", "a") as f:
        f.write("http://web/t9.jpg\tnew\t00009\tt\n")
    changed = plan(s)
    assert [sh.rows for sh in changed.shards] == [3, 2, 3, 2, 3, 1]
    assert all(q.stat().st_mtime_ns == t for q, t in stamps.items() if "/00000/" in str(q) or "/00002/" in str(q))


def test_invalid_utf8_in_a_csv_costs_its_row_not_its_block(tmp_path):
    """pyarrow fails a whole block (thousands of rows) on one invalid UTF-8 byte; only the row that
    holds it may become a bad row, and every row of the file comes out."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(
        b"url,caption,id\nhttp://web/1.jpg,fine,k1\nhttp://web/2.jpg,caf\xe9,k2\n"
        b"http://web/\xff.jpg,ok,k3\nhttp://web/4.jpg,after,k4\n")
    s = settings(tmp_path, str(tmp_path / "in"), key_col="id")
    rows = {r["key"]: r for r in read_with_ray(plan(s), s).to_pylist()}
    assert sorted(rows) == ["k1", "k2", "k3", "k4"]
    assert [rows[k]["status"] for k in sorted(rows)] == ["pending", "bad_row", "bad_row", "pending"]
    assert rows["k2"]["error"] == "invalid UTF-8 in column 'caption'" and rows["k2"]["web_caption"] == "caf\ufffd"
    assert rows["k3"]["error"] == "invalid UTF-8 in column 'url'" and rows["k4"]["web_caption"] == "after"


def test_missing_carried_column_is_refused_naming_file_and_column(tmp_path):
    pq.write_table(web_table(3), tmp_path / "web.parquet")
    write_text_inputs(tmp_path / "in")
    with pytest.raises(InputError, match=r"web\.parquet has no column 'lang'"):
        plan(settings(tmp_path, str(tmp_path / "web.parquet"), save_additional_columns=["n", "lang"]))
    with pytest.raises(InputError, match=r"a\.csv has no column 'lang'"):
        plan(settings(tmp_path, str(tmp_path / "in" / "a.csv"), save_additional_columns=["lang"]))
    with pytest.raises(InputError, match=r"c\.jsonl has no column 'lang'"):
        plan(settings(tmp_path, str(tmp_path / "in" / "c.jsonl"), save_additional_columns=["lang"]))


def test_carried_columns_keep_their_type(tmp_path):
    table = web_table(4).append_column("lang", pa.array(["en", None, "fr", "de"]))
    pq.write_table(table, tmp_path / "web.parquet", row_group_size=2)
    s = settings(tmp_path, str(tmp_path / "web.parquet"), shard_size=2, save_additional_columns=["lang", "n"])
    p = plan(s)
    assert p.extra_schema == pa.schema([("lang", pa.string()), ("n", pa.int64())])
    extras = [json.loads(e) for sh in p.shards for e in read_shard(sh, s).column("_extra").to_pylist()]
    assert extras == [{"lang": "en", "n": 0}, {"lang": None, "n": 1}, {"lang": "fr", "n": 2}, {"lang": "de", "n": 3}]


# -- repeated keys ---------------------------------------------------------------------------------


def test_repeated_and_missing_keys_across_files_and_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(input_keys, "ROWS_PER_TASK", 4)  # several map tasks and reduce partitions
    (tmp_path / "in").mkdir()
    first = ["k1", "k2", None, "k3", "k1", "", "k4", "k5"]
    second = ["k5", "k6", "k2", "k7", "k6", "k8"]
    pq.write_table(pa.table({"url": [f"http://web/{i}" for i in range(8)], "caption": ["c"] * 8, "id": first}),
                   tmp_path / "in" / "a.parquet", row_group_size=2)
    (tmp_path / "in" / "b.csv").write_text("url,caption,id\n" + "".join(
        f"http://web/b{i},c,{k}\n" for i, k in enumerate(second)))
    s = settings(tmp_path, str(tmp_path / "in"), shard_size=3, key_col="id")
    p = plan(s)
    # only the repeated keys reach the driver, with their first row
    assert p.duplicates.first == {"k1": 0, "k2": 1, "k5": 7, "k6": 9} and not p.duplicates.unreadable
    out = read_with_ray(p, s)
    got = {r["key"]: (r["status"], r["error"]) for r in out.to_pylist()}
    seen: set[str] = set()
    expected = {}
    for index, key in enumerate(first + second):
        if key and key not in seen:
            seen.add(key)
            expected[key] = ("pending", None)
        else:
            expected[f"{key or ''}~row{index:010d}"] = ("bad_row", "key missing or repeated")
    assert got == expected and out.num_rows == 14


# -- object storage, corrupt files, other inputs -----------------------------------------------------


def test_input_on_s3_read_by_workers(tmp_path):
    with s3_server() as endpoint:
        options = {"s3": {"endpoint_url": endpoint, "key": S3_ENV["AWS_ACCESS_KEY_ID"],
                          "secret": S3_ENV["AWS_SECRET_ACCESS_KEY"]}}
        fs = fsspec.filesystem("s3", **options["s3"])
        buf = io.BytesIO()
        pq.write_table(web_table(5), buf, row_group_size=2)
        fs.pipe_file("capfilt/in/a.parquet", buf.getvalue())
        fs.pipe_file("capfilt/in/b.csv", b"url,caption\nhttp://web/x.jpg,from csv\nhttp://web/y.jpg,y\n")
        buf = io.BytesIO()
        pq.write_table(web_table(5, start=100), buf)  # one row group larger than a shard: split too
        fs.pipe_file("capfilt/in/c.parquet", buf.getvalue())
        s = BootstrapSettings(input="s3://capfilt/in", output="s3://capfilt/out", download_only=True, shard_size=2,
                              storage_options=options)
        fingerprint = input_fingerprint(s)
        p = plan(s)
        assert [(sh.kind, sh.rows) for sh in p.shards] == [("parquet", 2)] * 2 + [("parquet", 1), ("piece", 2)] + [
            ("piece", 2), ("piece", 2), ("piece", 1)]
        assert fs.exists("capfilt/out/_work/input/00001.json") and fs.exists("capfilt/out/_work/input/00002.json")
        out = read_with_ray(p, s)
        assert out.num_rows == 12 and sorted(out.column("key").to_pylist()) == [f"{i:010d}" for i in range(12)]
        captions = out.column("web_caption").to_pylist()
        assert "from csv" in captions and captions[-1] == "caption 104"
        fs.pipe_file("capfilt/in/b.csv", b"url,caption\nhttp://web/x.jpg,changed\n")
        assert input_fingerprint(s) != fingerprint


def test_unreadable_shard_leaves_as_placeholder_rows(tmp_path):
    path = tmp_path / "web.parquet"
    table = web_table(10).append_column("id", pa.array([f"k{i}" for i in range(10)]))
    pq.write_table(table, path, row_group_size=4)
    meta = pq.read_metadata(path)
    spans = [chunk_span(meta, 1, c) for c in range(meta.num_columns)]
    data = bytearray(path.read_bytes())
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    data[lo:hi] = b"\0" * (hi - lo)  # row group 1's pages are garbage; the footer is intact
    path.write_bytes(bytes(data))

    for key_col in (None, "id"):
        s = settings(tmp_path, str(path), shard_size=4, key_col=key_col)
        p = plan(s)
        assert [sh.rows for sh in p.shards] == [4, 4, 2]
        if key_col:  # the key pass could not read it either, and says so
            assert list(p.duplicates.unreadable) == [1] and not p.duplicates.first
        tables = [read_shard(sh, s, p.duplicates) for sh in p.shards]
        bad = tables[1]
        assert bad.num_rows == 4 and bad.column("key").to_pylist() == [f"{i:010d}" for i in range(4, 8)]
        assert set(bad.column("status").to_pylist()) == {"bad_row"}
        assert all(e.startswith("cannot read input: ") for e in bad.column("error").to_pylist())
        assert bad.equals(read_shard(p.shards[1], s, p.duplicates))  # the same text on every run
        assert set(tables[0].column("status").to_pylist()) == set(tables[2].column("status").to_pylist()) == {
            "pending"}


def jpeg_bytes(colour: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(buf, "JPEG")
    return buf.getvalue()


def write_capfilt_output(root: Path, download_only: bool) -> None:
    """A tiny bootstrap output as layout.py and shard_output.py write it: 2 committed shards."""
    shards = [[("a.b/c", "ok", None, True), ("k1", "download_error", "HTTP 404", False), ("k2", "ok", None, False)],
              [("k3", "ok", None, True), ("k4", "bad_row", "url missing", False)]]
    for shard, rows in enumerate(shards):
        files = shard_files(shard)
        columns = {f.name: pa.nulls(len(rows), f.type) for f in OUTPUT_SCHEMA}
        columns.update(key=pa.array([r[0] for r in rows]), status=pa.array([r[1] for r in rows]),
                       error=pa.array([r[2] for r in rows], pa.string()),
                       url=pa.array([f"http://web/{r[0]}" for r in rows]),
                       web_caption=pa.array([f"web {r[0]}" for r in rows]))
        table = pa.table(columns).append_column("lang", pa.array(["en"] * len(rows)))
        for rel in files.values():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / files["parquet"])
        with tarfile.open(root / files["webdataset"], "w") as tar:
            for key, _, _, in_tar in rows:  # k2 is ok but its image is not in the tar
                for ext, data in (("jpg", jpeg_bytes(len(key))), ("txt", b"web"), ("json", b"{}")):
                    if in_tar:
                        info = tarfile.TarInfo(f"{wds_key(key)}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        (root / files["stats"]).write_text("{}")
        (root / marker_path(shard)).parent.mkdir(parents=True, exist_ok=True)
        (root / marker_path(shard)).write_text(json.dumps({"rows": len(rows), "files": files}))
    (root / "manifest.json").write_text(json.dumps({"settings": {"download_only": download_only}}))


def test_capfilt_download_only_output_as_input(tmp_path):
    write_capfilt_output(tmp_path / "fetched", download_only=True)
    (tmp_path / "fetched" / "_work" / "parts").mkdir(parents=True)  # leftovers of a live run count for nothing
    s = settings(tmp_path, str(tmp_path / "fetched"), save_additional_columns=["lang"], key_col="ignored")
    p = plan(s)
    assert [(sh.kind, sh.rows) for sh in p.shards] == [("capfilt", 3), ("capfilt", 2)] and p.duplicates is None
    assert p.extra_schema == pa.schema([("lang", pa.string())])
    rows = {r["key"]: r for r in read_with_ray(p, s).to_pylist()}
    assert rows["a.b/c"]["status"] == "pending" and rows["a.b/c"]["image"] == jpeg_bytes(5)
    assert rows["k3"]["image"] == jpeg_bytes(2) and rows["k3"]["shard"] == 1
    assert (rows["k1"]["status"], rows["k1"]["error"], rows["k1"]["image"]) == ("download_error", "HTTP 404", None)
    assert (rows["k2"]["status"], rows["k2"]["error"]) == ("download_error", MISSING_IMAGE)
    assert (rows["k4"]["status"], rows["k4"]["error"]) == ("bad_row", "url missing")
    assert json.loads(rows["k4"]["_extra"]) == {"lang": "en"}

    write_capfilt_output(tmp_path / "bootstrapped", download_only=False)
    with pytest.raises(InputError, match="not written with --download-only"):
        plan(settings(tmp_path, str(tmp_path / "bootstrapped")))


def test_img2dataset_output_as_input(tmp_path):
    folder = tmp_path / "i2d"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        info = tarfile.TarInfo("000000000.jpg")
        info.size = len(jpeg_bytes(1))
        tar.addfile(info, io.BytesIO(jpeg_bytes(1)))
    pq.write_table(pa.table({"key": ["000000000", "000000001"], "url": ["http://a/0", "http://a/1"],
                             "caption": ["zero", "one"], "status": ["success", "failed_to_download"],
                             "error_message": [None, "timeout"]}), folder / "00000.parquet")
    s = settings(tmp_path, str(folder))
    p = plan(s)
    assert [(sh.kind, sh.rows) for sh in p.shards] == [("i2d_wds", 2)]
    rows = read_shard(WorkShard.from_dict(p.shards[0].to_dict()), s).to_pylist()
    assert [(r["key"], r["status"], r["error"]) for r in rows] == [
        ("000000000", "pending", None), ("000000001", "download_error", "timeout")]
    assert rows[0]["image"] == jpeg_bytes(1) and rows[0]["web_caption"] == "zero"
