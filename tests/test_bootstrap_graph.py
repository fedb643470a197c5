"""The bootstrap graph on local Ray, over the toy world served on loopback, tiny random checkpoints."""

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
import webdataset as wds

from bootstrap_world import (EXPECTED_STATUS, SLOW, TIMEOUT, bootstrap_settings, make_checkpoint, make_small_world,
                             stop_processes_mentioning)
from capfilt.world.server import WorldServer
from pipelines.bootstrap.run import BootstrapError, run_bootstrap
from pipelines.bootstrap.schema import OUTPUT_SCHEMA

WORLD_ROWS = 40
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bootstrap")
    world = make_small_world(root / "world", WORLD_ROWS)
    server = WorldServer(world.root, port=0, slow_seconds=SLOW).start()
    urls = world.write_urls(root / "web.parquet", server.base_url)
    checkpoint = make_checkpoint(root / "ckpt")
    # 4 logical CPUs on 2 cores: two actors hold one each for their lifetime, and the
    # download tasks still need room to run.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield {"root": root, "world": world, "urls": urls, "ckpt": checkpoint, "server": server}
    ray.shutdown()
    server.stop()


@pytest.fixture(scope="module")
def main_run(env):
    """One run that most checks read: 3 captions, threshold 0 (keeps everything)."""
    settings = bootstrap_settings(env["urls"], env["root"] / "main", env["ckpt"], num_captions=3, threshold=0.0)
    return settings, run_bootstrap(settings, verbose=False)


def read_output(out: Path) -> list[dict]:
    return pq.read_table(out / "parquet").sort_by("key").to_pylist()


def test_every_row_accounted_for_with_the_status_its_url_deserves(env, main_run):
    settings, manifest = main_run
    rows = read_output(settings.output)
    assert manifest["input_rows"] == manifest["output_rows"] == len(rows) == WORLD_ROWS
    assert len({r["key"] for r in rows}) == WORLD_ROWS
    labels = env["world"].web_labels
    assert {labels[r["key"]]["fetch"] for r in rows} >= {"not_found", "truncated", "not_image", "slow"}
    for r in rows:
        assert r["status"] == EXPECTED_STATUS[labels[r["key"]]["fetch"]], (r["key"], r["error"])
        assert (r["image"] is not None) == (r["status"] == "ok")
        assert (r["error"] is None) == (r["status"] == "ok")
    assert sum(manifest["status"].values()) == WORLD_ROWS
    assert manifest["status"]["ok"] == sum(r["status"] == "ok" for r in rows)


def test_knobs_reach_caption_and_filter(main_run):
    settings, manifest = main_run
    ok = [r for r in read_output(settings.output) if r["status"] == "ok"]
    assert ok and all(len(r["synthetic_captions"]) == 3 == len(r["synthetic_itm"]) == len(r["synthetic_itc"])
                      for r in ok)
    # threshold 0 keeps everything, web captions included
    assert all(all(r["synthetic_kept"]) and r["web_kept"] for r in ok if r["web_caption"] is not None)
    assert manifest["kept"]["synthetic"] == 3 * len(ok)
    assert all(0.0 <= p <= 1.0 for r in ok for p in r["synthetic_itm"])
    failed = [r for r in read_output(settings.output) if r["status"] != "ok"]
    assert all(r["synthetic_captions"] == [] and not r["web_kept"] and r["web_itm"] is None for r in failed)


def test_manifest_describes_the_run(env, main_run):
    settings, manifest = main_run
    on_disk = json.loads((settings.output / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["settings"]["num_captions"] == 3 and manifest["settings"]["threshold"] == 0.0
    assert len(manifest["checkpoints"]["captioner"]) == 64
    assert manifest["versions"]["ray"] == ray.__version__
    assert set(manifest["stages"]) == {"download", "caption", "filter"}
    assert manifest["stages"]["caption"]["images"] == manifest["status"]["ok"]


def test_outputs_read_by_ray_data_and_webdataset(main_run):
    settings, manifest = main_run
    ds = ray.data.read_parquet(str(settings.output / "parquet"))
    assert ds.count() == WORLD_ROWS
    assert set(OUTPUT_SCHEMA.names) <= set(ds.schema().names)
    tars = sorted(str(p) for p in (settings.output / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == manifest["images_in_webdataset"] > 0
    first = samples[0]
    assert first["jpg"].size == (64, 64)
    assert first["txt"].split("\n") == first["json"]["kept_captions"]


def test_threshold_one_keeps_no_synthetic_and_keep_all_web_keeps_web(env):
    settings = bootstrap_settings(env["urls"], env["root"] / "strict", env["ckpt"], threshold=1.0, filter_web=False,
                                  num_captions=2, decoding="beam", num_beams=2)
    manifest = run_bootstrap(settings, verbose=False)
    rows = [r for r in read_output(settings.output) if r["status"] == "ok"]
    assert manifest["kept"]["synthetic"] == 0 and all(not any(r["synthetic_kept"]) for r in rows)
    assert all(len(r["synthetic_captions"]) == 2 for r in rows)
    with_web = [r for r in rows if r["web_caption"] is not None]
    assert with_web and all(r["web_kept"] for r in with_web) and manifest["kept"]["web"] == len(with_web)
    assert manifest["output_rows"] == WORLD_ROWS


def test_resume_redoes_only_missing_shards_and_ends_identical(env, main_run):
    settings, manifest = main_run
    out = env["root"] / "resumed"
    shutil.copytree(settings.output, out)
    # what a run killed part-way leaves: two shards never committed, a half-written temp file,
    # a parquet renamed into place whose marker was never written
    for name in ("00001", "00002"):
        (out / "_work" / "done" / f"{name}.json").unlink()
    (out / "parquet" / ".00001.parquet.tmp").write_bytes(b"half a shard")
    (out / "webdataset" / "00002.tar").unlink(missing_ok=True)
    resumed = run_bootstrap(settings.model_copy(update={"output": out, "resume": True}), verbose=False)
    assert resumed["shards"] == {"total": manifest["shards"]["total"], "this_run": 2}
    assert read_output(out) == read_output(settings.output)
    assert sorted(p.name for p in (out / "parquet").iterdir()) == sorted(
        p.name for p in (settings.output / "parquet").iterdir())
    for key in ("input_rows", "output_rows", "status", "kept", "images_in_webdataset"):
        assert resumed[key] == manifest[key]
    # nothing left to do: a second resume runs no shard
    again = run_bootstrap(settings.model_copy(update={"output": out, "resume": True}), verbose=False)
    assert again["shards"]["this_run"] == 0


def same_rows(got: list[dict], want: list[dict]) -> None:
    """Row for row the same output; ITM/ITC scores to float precision (another shard size puts
    rows in other batches, and a matmul's last bits depend on the batch)."""
    assert [r["key"] for r in got] == [r["key"] for r in want]
    for g, w in zip(got, want):
        for column, value in w.items():
            if column.endswith(("_itm", "_itc")) and value is not None:
                assert g[column] == pytest.approx(value, abs=1e-5), (w["key"], column)
            else:
                assert g[column] == value, (w["key"], column)


def test_resume_after_the_job_is_killed_part_way(env, main_run, tmp_path):
    """The job as a user runs it (`python -m pipelines.bootstrap`, its own Ray), killed with
    SIGKILL once some shards are committed; --resume keeps those files untouched, does the rest,
    and the output is the uninterrupted run's."""
    settings, _ = main_run
    out = env["root"] / "killed"
    # batches of one shard each, so that shards finish one by one (the shard holding a slow URL
    # last), not all in the graph's final batch; batch sizes do not change the output
    killed = settings.model_copy(update={"output": out, "shard_size": 4, "batch_size": 4, "download_batch_size": 4})
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(killed.model_dump(mode="json")))  # JSON is YAML
    ray_tmp = tempfile.mkdtemp(prefix="ray-killed-")  # short: Ray's socket paths have a length limit
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env["RAY_TMPDIR"] = ray_tmp
    done = out / "_work" / "done"
    total = math.ceil(WORLD_ROWS / 4)
    log = tmp_path / "job.log"
    try:
        # Ray gives its node 30 s to start; a machine busy with other work can miss that, and
        # the job then fails before it plans anything: one more try, on a clean folder
        for attempt in range(2):
            shutil.rmtree(out, ignore_errors=True)
            with open(log, "wb") as log_file:
                job = subprocess.Popen([sys.executable, "-m", "pipelines.bootstrap", "--config", str(config)],
                                       cwd=REPO, env=child_env, start_new_session=True, stdout=log_file,
                                       stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            while job.poll() is None and time.monotonic() < deadline and not list(done.glob("*.json")):
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
    committed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                 for p in (out / "parquet").glob("*.parquet") if (done / f"{p.stem}.json").exists()}
    assert 0 < len(committed) < total, f"{len(committed)} of {total} shards committed when killed"
    assert not (out / "manifest.json").exists()

    resumed = run_bootstrap(killed.model_copy(update={"resume": True}), verbose=False)
    assert resumed["shards"] == {"total": total, "this_run": total - len(committed)}
    for name, stamp in committed.items():
        path = out / "parquet" / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, f"{name} was written again"
    assert resumed["output_rows"] == resumed["input_rows"] == WORLD_ROWS
    same_rows(read_output(out), read_output(settings.output))


def test_refuses_to_mix_runs(env, main_run):
    settings, _ = main_run
    with pytest.raises(BootstrapError, match="--resume"):
        run_bootstrap(settings, verbose=False)
    with pytest.raises(BootstrapError, match="num_captions"):
        run_bootstrap(settings.model_copy(update={"resume": True, "num_captions": 1}), verbose=False)


def test_input_from_img2dataset_output(env, main_run):
    from img2dataset import download

    i2d = env["root"] / "i2d"
    url_list = env["world"].write_urls(env["root"] / "urls.csv", env["server"].base_url)
    download(url_list=str(url_list), output_folder=str(i2d), input_format="csv", caption_col="caption",
             output_format="webdataset",
             processes_count=1, thread_count=4, image_size=64, timeout=int(TIMEOUT), number_sample_per_shard=16,
             compute_hash=None, disallowed_header_directives=[])
    settings = bootstrap_settings(i2d, env["root"] / "from_i2d", env["ckpt"], key_col=None)
    manifest = run_bootstrap(settings, verbose=False)
    assert manifest["input_rows"] == manifest["output_rows"] == WORLD_ROWS
    rows = read_output(settings.output)
    assert len({r["key"] for r in rows}) == WORLD_ROWS
    # img2dataset's failures come through as failures; its successes are captioned and scored
    # (cv2 in img2dataset accepts a truncated JPEG, so those rows may be ok here)
    labels = {r["url"]: r["fetch"] for r in env["world"].urls(env["server"].base_url).join(
        env["world"].table("web_labels"), "key").to_pylist()}
    for r in rows:
        if labels[r["url"]] in ("not_found", "not_image", "slow"):
            assert r["status"] in ("download_error", "decode_error"), r
        if r["status"] == "ok":
            assert len(r["synthetic_captions"]) == 1 and r["web_itm"] is not None
