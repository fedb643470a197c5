"""Output on object storage: a real S3 API on loopback (moto's server), the job as a user runs it,
killed part-way and resumed: the same rows as an uninterrupted run, no committed shard written
twice; and input read from the same object store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from bootstrap_world import (SLOW, bootstrap_settings, kill_job_once_committed, make_checkpoint, make_small_world,
                             same_rows)
from capfilt.world.server import WorldServer
from pipelines.bootstrap.run import run_bootstrap
from s3_server import s3_server

WORLD_ROWS = 24


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bootstrap_s3")
    world = make_small_world(root / "world", WORLD_ROWS)
    with s3_server() as endpoint, WorldServer(world.root, port=0, slow_seconds=SLOW) as server:
        import s3fs

        fs = s3fs.S3FileSystem()
        urls = world.write_urls(root / "web.parquet", server.base_url)
        fs.put(str(urls), "capfilt/input/web.parquet")
        checkpoint = make_checkpoint(root / "ckpt")
        # started after the endpoint is in the environment: Ray's workers inherit it
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            yield {"root": root, "fs": fs, "endpoint": endpoint, "ckpt": checkpoint,
                   "input": "s3://capfilt/input/web.parquet"}
        finally:
            ray.shutdown()


def read_rows(fs, url: str) -> list[dict]:
    files = sorted(f for f in fs.find(url.removeprefix("s3://") + "/parquet") if f.endswith(".parquet"))
    return sorted((r for f in files for r in pq.read_table(f, filesystem=fs).to_pylist()), key=lambda r: r["key"])


@pytest.fixture(scope="module")
def uninterrupted(env):
    settings = bootstrap_settings(env["input"], "s3://capfilt/whole", env["ckpt"], shard_size=4, batch_size=4,
                                  download_batch_size=4)
    return settings, run_bootstrap(settings, verbose=False)


@pytest.mark.slow
def test_output_on_s3_reads_back_and_nothing_is_local(env, uninterrupted):
    settings, manifest = uninterrupted
    fs = env["fs"]
    assert manifest["output_rows"] == WORLD_ROWS and manifest["status"]["ok"] > 0
    assert not Path("s3:").exists(), "an s3:// output must not become a local folder named s3:"
    names = {p.rsplit("/", 1)[-1] for p in fs.find("capfilt/whole/webdataset")}
    assert names == {f"{i:05d}.tar" for i in range(manifest["shards"]["total"])}
    assert json.loads(fs.cat("capfilt/whole/manifest.json"))["output_rows"] == WORLD_ROWS
    assert not fs.exists("capfilt/whole/_work/parts"), "no part is left once every shard is committed"
    assert len(read_rows(fs, settings.output)) == WORLD_ROWS


@pytest.mark.slow
def test_resume_on_s3_after_the_job_is_killed_part_way(env, uninterrupted, tmp_path):
    """`python -m pipelines.bootstrap` with its own Ray, killed with SIGKILL once some shards are
    committed; --resume leaves those objects as they were (no shard written twice), does the rest,
    and the output is the uninterrupted run's, row for row."""
    settings, _ = uninterrupted
    fs = env["fs"]
    out = "s3://capfilt/killed"
    killed = settings.model_copy(update={"output": out})
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(killed.model_dump(mode="json")))  # JSON is YAML
    done = "capfilt/killed/_work/done"
    total = math.ceil(WORLD_ROWS / 4)

    def committed() -> list[str]:
        fs.invalidate_cache()
        return fs.ls(done, detail=False) if fs.exists(done) else []

    def clear_output() -> None:
        if fs.exists("capfilt/killed"):
            fs.rm("capfilt/killed", recursive=True)

    kill_job_once_committed(config, tmp_path / "job.log", committed=committed, clear_output=clear_output)
    markers = committed()
    assert 0 < len(markers) < total, f"{len(markers)} of {total} shards committed when killed"
    assert not fs.exists("capfilt/killed/manifest.json")
    names = [m.rsplit("/", 1)[-1].removesuffix(".json") for m in markers]
    objects = [f"capfilt/killed/{folder}/{n}{suffix}" for n in names
               for folder, suffix in (("parquet", ".parquet"), ("webdataset", ".tar"), ("stats", "_stats.json"))]
    stamps = {o: (fs.info(o)["LastModified"], fs.info(o)["ETag"]) for o in objects}

    resumed = run_bootstrap(killed.model_copy(update={"resume": True}), verbose=False)
    assert resumed["shards"] == {"total": total, "this_run": total - len(markers)}
    fs.invalidate_cache()
    for o, stamp in stamps.items():
        assert (fs.info(o)["LastModified"], fs.info(o)["ETag"]) == stamp, f"{o} was written again"
    assert resumed["output_rows"] == resumed["input_rows"] == WORLD_ROWS
    same_rows(read_rows(fs, out), read_rows(fs, settings.output))
    whole = sorted(p.rsplit("/", 1)[-1] for p in fs.find("capfilt/whole/webdataset"))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find("capfilt/killed/webdataset")) == whole
    for name in whole:
        assert fs.cat(f"capfilt/killed/webdataset/{name}") == fs.cat(f"capfilt/whole/webdataset/{name}")
