"""The write side without Ray: parts written by workers, a shard assembled from them, the commit
marker, sample keys and what a killed run leaves behind."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.bootstrap.layout import OutputLayout, parts_folder
from pipelines.bootstrap.part_writer import PartWriter, ShardAssemblyError, assemble_shard
from pipelines.bootstrap.schema import OUTPUT_SCHEMA, STAGE_SCHEMA
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_output import wds_key


def jpeg(size=(8, 8), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def finished_rows(keys: list[str], shard: int, kept: bool, status: str = "ok", extra: dict | None = None) -> pa.Table:
    n = len(keys)
    ok = status == "ok"
    table = pa.table({
        "key": keys, "url": ["http://x"] * n, "status": [status] * n, "error": [None if ok else "boom"] * n,
        "web_caption": ["web"] * n, "web_itm": [0.7] * n, "web_itc": [0.1] * n, "web_kept": [kept and ok] * n,
        "synthetic_captions": [["syn a", "syn b"]] * n, "synthetic_itm": [[0.9, 0.2]] * n,
        "synthetic_itc": [[0.3, 0.1]] * n, "synthetic_kept": [[kept, False]] * n, "width": [8] * n,
        "height": [8] * n, "image": [jpeg() if ok else None] * n, "shard": [shard] * n,
        "_seconds_download": [0.01] * n, "_extra": [json.dumps(extra) if extra else None] * n,
    })
    return table.cast(pa.schema([STAGE_SCHEMA.field(name) for name in table.column_names]))  # as stages type them


def settings_for(out: Path, **kw) -> BootstrapSettings:
    return BootstrapSettings(input="unused.parquet", output=out, download_only=True, **kw)


def write_parts(out: Path, *tables: pa.Table) -> dict[int, list[str]]:
    writer = PartWriter(settings_for(out))
    parts: dict[int, list[str]] = {}
    for table in tables:
        for record in writer(table).to_pylist():
            parts.setdefault(record["shard"], []).append(record["part"])
    return parts


def test_a_shard_is_assembled_from_parts_and_readable_by_webdataset(tmp_path):
    out = tmp_path / "out"
    layout = OutputLayout.at(str(out))
    parts = write_parts(out, finished_rows(["b", "a"], 0, kept=True),
                        pa.concat_tables([finished_rows(["c"], 0, kept=True), finished_rows(["d"], 1, kept=False)]))
    assert sorted(parts) == [0, 1] and len(parts[0]) == 2
    assert not (out / "parquet").exists(), "nothing of a shard is visible before it is whole"
    marker = assemble_shard(layout.storage, 0, parts[0], 3, pa.schema([]), download_only=False, parquet_images=False)
    table = pq.read_table(out / "parquet" / "00000.parquet")
    assert table.schema == OUTPUT_SCHEMA and table.column("key").to_pylist() == ["a", "b", "c"]
    samples = list(wds.WebDataset(str(out / "webdataset" / "00000.tar"), shardshuffle=False))
    # one sample per kept pair, one caption per .txt, the row in .json
    assert [s["__key__"] for s in samples] == ["a_web", "a_syn0", "b_web", "b_syn0", "c_web", "c_syn0"]
    assert [s["txt"].decode() for s in samples[:2]] == ["web", "syn a"]
    meta = json.loads(samples[1]["json"])
    assert meta["key"] == "a" and meta["synthetic_kept"] == [True, False] and meta["caption_source"] == "synthetic"
    assert meta["itm"] == pytest.approx(0.9)
    assert marker["kept_synthetic"] == 3 and marker["samples_in_webdataset"] == 6 and marker["images_in_webdataset"] == 3
    assert marker["files"]["webdataset"] == "webdataset/00000.tar"
    assert json.loads((out / "stats" / "00000_stats.json").read_text())["successes"] == 3
    assert not (out / parts_folder(0)).exists(), "parts go once the shard is written"


def test_a_shard_with_nothing_kept_still_has_its_tar_so_shard_numbers_have_no_gaps(tmp_path):
    out = tmp_path / "out"
    parts = write_parts(out, finished_rows(["d"], 1, kept=False))
    marker = assemble_shard(OutputLayout.at(str(out)).storage, 1, parts[1], 1, pa.schema([]), False, False)
    with tarfile.open(out / "webdataset" / "00001.tar") as tar:
        assert tar.getmembers() == []
    assert marker["samples_in_webdataset"] == 0 and marker["status"] == {"ok": 1}


def test_stats_count_statuses_and_errors(tmp_path):
    out = tmp_path / "out"
    parts = write_parts(out, pa.concat_tables([finished_rows(["a", "b"], 0, kept=True, status="download_error"),
                                               finished_rows(["c"], 0, kept=True)]))
    marker = assemble_shard(OutputLayout.at(str(out)).storage, 0, parts[0], 3, pa.schema([]), False, False)
    assert marker["status"] == {"ok": 1, "download_error": 2} and marker["status_dict"] == {"boom": 2}
    assert marker["count"] == 3 and marker["successes"] == 1


def test_assembly_refuses_a_shard_that_is_not_whole(tmp_path):
    out = tmp_path / "out"
    parts = write_parts(out, finished_rows(["a", "b"], 0, kept=True))
    with pytest.raises(ShardAssemblyError, match="planned 3"):
        assemble_shard(OutputLayout.at(str(out)).storage, 0, parts[0], 3, pa.schema([]), False, False)


def test_download_only_writes_img2dataset_samples_and_carried_columns(tmp_path):
    out = tmp_path / "out"
    table = finished_rows(["x.1/y"], 0, kept=False, extra={"license": "cc-by", "width_cm": 12})
    # what the download stage hands on: no model columns
    table = table.drop_columns(["web_itm", "web_itc", "web_kept", "synthetic_captions", "synthetic_itm",
                                "synthetic_itc", "synthetic_kept"])
    parts = write_parts(out, table)
    extra = pa.schema([("license", pa.string()), ("width_cm", pa.int64())])
    assemble_shard(OutputLayout.at(str(out)).storage, 0, parts[0], 1, extra, download_only=True, parquet_images=True)
    row = pq.read_table(out / "parquet" / "00000.parquet").to_pylist()[0]
    assert row["license"] == "cc-by" and row["width_cm"] == 12 and row["image"][:2] == b"\xff\xd8"
    assert row["web_kept"] is True and row["synthetic_captions"] == []
    samples = list(wds.WebDataset(str(out / "webdataset" / "00000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [wds_key("x.1/y")] == ["x%2E1%2Fy"]
    assert samples[0]["txt"] == b"web" and json.loads(samples[0]["json"])["license"] == "cc-by"


def test_sample_keys_are_webdataset_safe_and_one_to_one():
    keys = ["plain_key-1", "a.b", "a/b", "a%2Eb", "ünï cödé", "a" * 200]
    safe = [wds_key(k) for k in keys]
    assert len(set(safe)) == len(keys)
    assert all("." not in s and "/" not in s for s in safe)
    assert safe[0] == "plain_key-1"


def test_clear_uncommitted_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    layout = OutputLayout.at(str(out))
    parts = write_parts(out, finished_rows(["a"], 0, kept=True), finished_rows(["b"], 1, kept=True))
    layout.write_marker(0, assemble_shard(layout.storage, 0, parts[0], 1, pa.schema([]), False, False))
    assemble_shard(layout.storage, 1, parts[1], 1, pa.schema([]), False, False)  # killed before its marker
    write_parts(out, finished_rows(["c"], 2, kept=True))  # killed while shard 2 was in flight
    (out / "parquet" / ".00003.parquet.tmp").write_bytes(b"half")
    layout.clear_uncommitted()
    assert sorted(p.name for p in (out / "parquet").iterdir()) == ["00000.parquet"]
    assert sorted(p.name for p in (out / "webdataset").iterdir()) == ["00000.tar"]
    assert sorted(p.name for p in (out / "stats").iterdir()) == ["00000_stats.json"]
    assert not (out / "_work" / "parts").exists()
    assert layout.done_ids() == {0} and layout.committed_files("webdataset") == ["webdataset/00000.tar"]
