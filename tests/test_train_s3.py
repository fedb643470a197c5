"""Training reads a bootstrap output where it lies: on object storage (moto's S3 server on
loopback, reached through AWS_ENDPOINT_URL as a user's cluster reaches its store), only the shards
that a marker commits, images from the tars. The sources are checked without Ray; then a real
pre-training job streams the committed pairs from S3 and trains on exactly those."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw
from s3_server import s3_server

from pipelines.bootstrap.layout import OutputLayout, shard_files
from pipelines.bootstrap.shard_output import (
    kept_pairs,
    output_table,
    shard_stats,
    tar_bytes,
)
from pipelines.bootstrap.storage import Storage
from pipelines.train.data import DataError, resolve_source

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
ROOT = "s3://capfilt/boot"


def square(colour: str, side: str) -> bytes:
    image = Image.new("RGB", (32, 32), (240, 240, 240))
    x = 2 if side == "left" else 18
    ImageDraw.Draw(image).rectangle([x, 10, x + 11, 21], fill=COLOURS[colour])
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def pair_row(key: str, colour: str, side: str, web_kept: bool = True, synthetic: Sequence[bool] = (),
             status: str = "ok") -> dict[str, Any]:
    """One bootstrap output row: a web caption and synthetic captions with their kept flags."""
    ok = status == "ok"
    return {
        "key": key, "url": f"http://example.invalid/{key}.jpg", "status": status, "error": None if ok else status,
        "web_caption": f"a {colour} square on the {side}", "web_itm": 0.9 if web_kept else 0.1, "web_itc": 0.2,
        "web_kept": ok and web_kept,
        "synthetic_captions": [f"a picture of a {colour} square number {j} at the {side}" for j in range(len(synthetic))],
        "synthetic_itm": [0.8 if k else 0.2 for k in synthetic], "synthetic_itc": [0.1] * len(synthetic),
        "synthetic_kept": [ok and k for k in synthetic], "width": 32, "height": 32,
        "image": square(colour, side) if ok else None,
    }


def _put_shard(storage: Storage, shard: int, rows: list[dict[str, Any]]) -> dict[str, str]:
    rows = sorted(rows, key=lambda r: r["key"])
    files = shard_files(shard)
    tar, samples, images = tar_bytes(rows, download_only=False)
    storage.put(files["webdataset"], tar)
    buf = io.BytesIO()
    pq.write_table(output_table(rows, pa.schema([]), parquet_images=False), buf)
    storage.put(files["parquet"], buf.getvalue())
    storage.put(files["stats"], json.dumps(shard_stats(shard, rows, samples, images)).encode())
    return files


def write_bootstrap_output(root: str, shards: list[list[dict[str, Any]]],
                           leftover: list[dict[str, Any]] | None = None) -> None:
    """A bootstrap output folder as the bootstrap writes it: every shard's files, then its marker;
    `leftover` is one more shard whose files a killed run wrote but never committed."""
    storage = Storage(root)
    storage.put("_work/run.json", b"{}")
    for shard, rows in enumerate(shards):
        OutputLayout(storage).write_marker(shard, {"shard": shard, "files": _put_shard(storage, shard, rows)})
    if leftover:
        _put_shard(storage, len(shards), leftover)


def committed_shards() -> list[list[dict[str, Any]]]:
    """12 kept pairs over 3 shards; shard 1 keeps nothing, so its tar is empty."""
    return [
        [pair_row("a", "red", "left", synthetic=[True, False]), pair_row("b", "green", "right"),
         pair_row("c.d/e", "blue", "left", synthetic=[True]), pair_row("f", "red", "right")],
        [pair_row("g", "green", "left", web_kept=False, synthetic=[False]), pair_row("h", "red", "left", status="download_error")],
        [pair_row("i", "blue", "right", synthetic=[True, True]), pair_row("j", "green", "left", web_kept=False, synthetic=[True]),
         pair_row("k", "red", "left"), pair_row("l", "blue", "left", web_kept=False, synthetic=[False, True])],
    ]


def leftover_shard() -> list[dict[str, Any]]:
    """8 pairs that no marker commits: 20 pairs in all would give 5 steps of 4, not 3."""
    return [pair_row(f"z{i}", "green", "right", synthetic=[True]) for i in range(4)]


def expected_pairs(shards: list[list[dict[str, Any]]]) -> Counter:
    return Counter((caption, row["key"]) for rows in shards for row in rows for _, caption, _, _ in kept_pairs(row))


@pytest.fixture()
def s3():
    with s3_server() as endpoint:
        yield endpoint


# ---- sources, without Ray --------------------------------------------------------------------------
def test_a_bootstrap_output_on_s3_is_its_committed_tars(s3):
    write_bootstrap_output(ROOT, committed_shards(), leftover_shard())
    source = resolve_source(ROOT + "/")
    assert source.kind == "webdataset" and not source.local
    assert source.files == tuple(f"{ROOT}/webdataset/{i:05d}.tar" for i in range(3))  # the empty tar too
    assert sum(expected_pairs(committed_shards()).values()) == 12


def test_object_storage_paths_fail_with_the_path_named(s3):
    with pytest.raises(DataError, match="path not found: s3://capfilt/nowhere"):
        resolve_source("s3://capfilt/nowhere")
    storage = Storage(ROOT)
    storage.put("_work/run.json", b"{}")
    storage.put("webdataset/00000.tar", tar_bytes([pair_row("a", "red", "left")], download_only=False)[0])
    with pytest.raises(DataError, match="s3://capfilt/boot is a bootstrap output with no committed shard yet"):
        resolve_source(ROOT)
    with pytest.raises(DataError, match="neither a .parquet"):
        resolve_source(f"{ROOT}/_work/run.json")
    with pytest.raises(DataError, match="cannot open nosuchprotocol://x"):
        resolve_source("nosuchprotocol://x")


def test_other_layouts_on_s3(s3):
    shards = Storage("s3://capfilt/i2d")
    shards.put("00000.tar", b"")
    shards.put("00000.parquet", b"")
    shards.put("00001.tar", b"")
    assert resolve_source("s3://capfilt/i2d").files == ("s3://capfilt/i2d/00000.tar", "s3://capfilt/i2d/00001.tar")
    assert resolve_source("s3://capfilt/i2d/00001.tar").kind == "webdataset"
    world = Storage("s3://capfilt/world")
    world.put("human.parquet", b"")
    world.put("scenes.jsonl", b"")
    world.put("manifest.json", b"{}")
    with pytest.raises(DataError, match="name a split: s3://capfilt/world/human.parquet"):
        resolve_source("s3://capfilt/world")
    assert resolve_source("s3://capfilt/world/human.parquet").kind == "parquet"


# ---- a pre-training job on S3 -----------------------------------------------------------------------
@pytest.mark.slow
def test_pretraining_reads_only_the_committed_pairs_from_s3(s3, tmp_path, monkeypatch):
    import ray

    from pipelines.train.data import pair_dataset, resolve_sources, scan_pairs
    from pipelines.train.job import run_training
    from pipelines.train.metrics import read_metrics
    from pipelines.train.settings import TrainSettings

    shards = committed_shards()
    write_bootstrap_output(ROOT, shards, leftover_shard())
    expected = expected_pairs(shards)
    # on a busy 2-core machine, starting a torch worker can pass Ray Train's 60 s default
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # inside the server's block: Ray's workers inherit AWS_ENDPOINT_URL and the keys
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        sources = resolve_sources([ROOT])
        pairs = pair_dataset(sources)
        rows = pairs.take_all()
        assert Counter((r["caption"], r["image_key"]) for r in rows) == expected
        by_key = {row["key"]: row["image"] for rows_ in shards for row in rows_}
        assert all(r["image"] == by_key[r["image_key"]] for r in rows)  # each pair with its own image
        assert scan_pairs(pairs, sources)[0] == 12

        settings = TrainSettings(data=[ROOT], output=tmp_path / "pre", num_workers=1, batch_size=4, image_size=32,
                                 warmup_steps=1, log_every=1, checkpoint_every=100, shuffle_buffer=0, max_failures=0)
        summary = run_training(settings)
    finally:
        ray.shutdown()
    # one epoch of 12 pairs in steps of 4: the leftover's 8 pairs would have made 5 steps
    assert summary["step"] == 3 and summary["samples"] == 12
    assert [r["step"] for r in read_metrics(tmp_path / "pre") if "loss" in r] == [1, 2, 3]
    assert (Path(summary["model"]) / "config.json").is_file()
