"""Output on object storage: a real S3 API on loopback (moto's server), the job as a user runs it,
killed part-way and resumed: the same rows as an uninterrupted run, no committed shard written
twice; and input read from the same object store."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from bootstrap_world import SLOW, bootstrap_settings, make_checkpoint, make_small_world, stop_processes_mentioning
from capfilt.world.server import WorldServer
from pipelines.bootstrap.run import run_bootstrap
from s3_server import s3_server

WORLD_ROWS = 24
REPO = Path(__file__).resolve().parents[1]


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
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            yield {"root": root, "fs": fs, "endpoint": endpoint, "ckpt": checkpoint,
                   "input": "s3://capfilt/input/web.parquet"}
        finally:
            ray.shutdown()


def read_rows(fs, url: str) -> list[dict]:
    files = sorted(f for f in fs.find(url.removeprefix("s3://") + "/parquet") if f.endswith(".parquet"))
    return sorted((r for f in files for r in pq.read_table(f, filesystem=fs).to_pylist()), key=lambda r: r["key"])


def same_rows(got: list[dict], want: list[dict]) -> None:
    """Row for row the same output; ITM/ITC scores to float precision (another batch puts rows
    in other matmuls, and a matmul's last bits depend on the batch)."""
    assert [r["key"] for r in got] == [r["key"] for r in want]
    for g, w in zip(got, want):
        for column, value in w.items():
            if column.endswith(("_itm", "_itc")) and value is not None:
                assert g[column] == pytest.approx(value, abs=1e-5), (w["key"], column)
            else:
                assert g[column] == value, (w["key"], column)


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
    ray_tmp = tempfile.mkdtemp(prefix="ray-killed-")  # short: Ray's socket paths have a length limit
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env["RAY_TMPDIR"] = ray_tmp
    done = "capfilt/killed/_work/done"
    total = math.ceil(WORLD_ROWS / 4)
    log = tmp_path / "job.log"

    def committed() -> list[str]:
        fs.invalidate_cache()
        return fs.ls(done, detail=False) if fs.exists(done) else []

    try:
        # Ray gives its node 30 s to start; a machine busy with other work can miss that, and
        # the job then fails before it plans anything: one more try, on a clean prefix
        for attempt in range(2):
            if fs.exists("capfilt/killed"):
                fs.rm("capfilt/killed", recursive=True)
            with open(log, "wb") as log_file:
                job = subprocess.Popen([sys.executable, "-m", "pipelines.bootstrap", "--config", str(config)],
                                       cwd=REPO, env=child_env, start_new_session=True, stdout=log_file,
                                       stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            while job.poll() is None and time.monotonic() < deadline and not committed():
                time.sleep(0.05)
            if job.poll() is not None and "timed out during startup" in log.read_text(errors="replace"):
                stop_processes_mentioning(ray_tmp)
                continue
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
            break
    finally:
        stop_processes_mentioning(ray_tmp)  # the Ray instance the job started
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == -signal.SIGKILL, f"the job ended before it was killed: {log.read_text()[-2000:]}"
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
