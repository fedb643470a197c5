"""The bootstrap graph on local Ray, over the toy world served on loopback, tiny random checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds

from bootstrap_world import (EXPECTED_STATUS, SLOW, TIMEOUT, bootstrap_settings, make_checkpoint, make_small_world)
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
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield {"root": root, "world": world, "urls": urls, "ckpt": checkpoint, "server": server}
    ray.shutdown()
    server.stop()


@pytest.fixture(scope="module")
def main_run(env):
    """One run that most checks read: 3 captions, threshold 0 (keeps everything)."""
    settings = bootstrap_settings(env["urls"], env["root"] / "main", env["ckpt"], num_captions=3, threshold=0.0,
                                  progress_seconds=1e-6)
    lines: list[str] = []
    manifest = run_bootstrap(settings, verbose=False, log=lines.append)
    env["main_progress"] = lines
    return settings, manifest


def test_the_driver_imports_no_model_code_and_no_img2dataset():
    """The driver plans and commits; the stages' heavy imports (the BLIP model code with
    torch._dynamo, img2dataset with its writers) happen in the workers, off the driver's critical
    path before the graph starts. (It does import torch and transformers' configs: the hub
    resolver names the released presets by their configs.)"""
    heavy = ("transformers.models.blip.modeling_blip", "torch._dynamo", "img2dataset")
    code = f"import sys, pipelines.bootstrap.run; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def read_output(out: Path) -> list[dict]:
    return pq.read_table(Path(out) / "parquet").sort_by("key").to_pylist()


def read_samples(out: Path) -> list[dict]:
    tars = sorted(str(p) for p in (Path(out) / "webdataset").glob("*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))


@pytest.mark.slow
def test_every_row_accounted_for_with_the_status_its_url_deserves(env, main_run):
    settings, manifest = main_run
    rows = read_output(settings.output)
    assert manifest["input_rows"] == manifest["output_rows"] == len(rows) == WORLD_ROWS
    assert len({r["key"] for r in rows}) == WORLD_ROWS
    labels = env["world"].web_labels
    assert {labels[r["key"]]["fetch"] for r in rows} >= {"not_found", "truncated", "not_image", "slow"}
    with_image = {json.loads(s["json"])["key"] for s in read_samples(settings.output)}
    for r in rows:
        assert r["status"] == EXPECTED_STATUS[labels[r["key"]]["fetch"]], (r["key"], r["error"])
        assert (r["key"] in with_image) == (r["status"] == "ok"), "threshold 0: every ok image has its pairs"
        assert (r["error"] is None) == (r["status"] == "ok")
    assert "image" not in rows[0], "images are stored once, in the tars"
    assert sum(manifest["status"].values()) == WORLD_ROWS
    assert manifest["status"]["ok"] == sum(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_model_stages_pass_batch_sized_blocks_on_so_caption_and_filter_overlap(env, main_run):
    """Rows reach the writer (and the filter) a caption batch at a time, not a shard at a time: a
    shard of 16 rows read and downloaded as one block is cut into blocks of batch_size rows, so
    the filter works on one batch while the captioner does the next (one 16-row block would keep
    the filter idle until the captioner had finished all 16)."""
    settings, manifest = main_run
    done = [int(m.group(1)) for m in map(re.compile(r"bootstrap: rows (\d+)/").search, env["main_progress"]) if m]
    steps = [b - a for a, b in zip([0, *done], done) if b > a]
    assert sum(steps) == WORLD_ROWS
    assert settings.shard_size > settings.batch_size and max(steps) <= settings.batch_size, steps


@pytest.mark.slow
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


@pytest.mark.slow
def test_manifest_describes_the_run(env, main_run):
    settings, manifest = main_run
    on_disk = json.loads((Path(settings.output) / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["settings"]["num_captions"] == 3 and manifest["settings"]["threshold"] == 0.0
    assert len(manifest["checkpoints"]["captioner"]) == 64
    assert manifest["versions"]["ray"] == ray.__version__
    assert set(manifest["stages"]) == {"download", "caption", "filter"}
    assert manifest["stages"]["caption"]["images"] == manifest["status"]["ok"]


@pytest.mark.slow
def test_outputs_read_by_ray_data_and_webdataset(main_run):
    settings, manifest = main_run
    out = Path(settings.output)
    ds = ray.data.read_parquet(str(out / "parquet"))
    assert ds.count() == WORLD_ROWS
    assert set(OUTPUT_SCHEMA.names) <= set(ds.schema().names)
    # a tar per shard, numbered without gaps, so `{00000..N}.tar` names them all
    shards = manifest["shards"]["total"]
    assert sorted(p.name for p in (out / "webdataset").iterdir()) == [f"{i:05d}.tar" for i in range(shards)]
    assert sorted(p.name for p in (out / "stats").iterdir()) == [f"{i:05d}_stats.json" for i in range(shards)]
    samples = read_samples(out)
    assert len(samples) == manifest["samples_in_webdataset"] == manifest["kept"]["web"] + manifest["kept"]["synthetic"]
    rows = {r["key"]: r for r in read_output(out)}
    for sample in samples:
        meta = json.loads(sample["json"])
        row = rows[meta["key"]]
        caption = sample["txt"].decode()
        # one kept caption per sample: the web caption or one synthetic caption of that row
        if meta["caption_source"] == "web":
            assert sample["__key__"].endswith("_web") and caption == row["web_caption"] and row["web_kept"]
        else:
            j = meta["synthetic_index"]
            assert caption == row["synthetic_captions"][j] and row["synthetic_kept"][j]
        assert meta["synthetic_itm"] == pytest.approx(row["synthetic_itm"])


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_redoes_only_missing_shards_and_ends_identical(env, main_run):
    settings, manifest = main_run
    out = env["root"] / "resumed"
    shutil.copytree(settings.output, out)
    # what a run killed part-way leaves: two shards never committed (one with its files written,
    # one with parts only), a half-written temp file
    for name in ("00001", "00002"):
        (out / "_work" / "done" / f"{name}.json").unlink()
    (out / "parquet" / ".00001.parquet.tmp").write_bytes(b"half a shard")
    (out / "webdataset" / "00002.tar").unlink()
    (out / "_work" / "parts" / "00002").mkdir(parents=True)
    (out / "_work" / "parts" / "00002" / "stale.parquet").write_bytes(b"a part of a run that died")
    resumed = run_bootstrap(settings.model_copy(update={"output": str(out), "resume": True}), verbose=False)
    assert resumed["shards"] == {"total": manifest["shards"]["total"], "this_run": 2}
    assert read_output(out) == read_output(settings.output)
    for folder in ("parquet", "webdataset", "stats"):
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(
            p.name for p in (Path(settings.output) / folder).iterdir())
    assert (out / "webdataset" / "00002.tar").read_bytes() == (Path(settings.output) / "webdataset" / "00002.tar").read_bytes()
    assert not [p for p in (out / "_work" / "parts").rglob("*") if p.is_file()], "no part outlives its shard"
    for key in ("input_rows", "output_rows", "status", "kept", "images_in_webdataset", "samples_in_webdataset"):
        assert resumed[key] == manifest[key]
    # nothing left to do: a second resume runs no shard
    again = run_bootstrap(settings.model_copy(update={"output": str(out), "resume": True}), verbose=False)
    assert again["shards"]["this_run"] == 0


@pytest.mark.slow
def test_fused_model_stages_write_what_the_split_pools_write(env, main_run):
    """--model-stages fused: actors that caption then filter their batches, same rows out."""
    settings, manifest = main_run
    out = env["root"] / "fused"
    fused = run_bootstrap(settings.model_copy(update={"output": str(out), "model_stages": "fused"}), verbose=False)
    split_rows, fused_rows = read_output(settings.output), read_output(out)
    assert [r["key"] for r in fused_rows] == [r["key"] for r in split_rows]
    for a, b in zip(split_rows, fused_rows):
        assert (b["status"], b["synthetic_captions"], b["synthetic_kept"], b["web_kept"]) == (
            a["status"], a["synthetic_captions"], a["synthetic_kept"], a["web_kept"]), a["key"]
        assert b["synthetic_itm"] == pytest.approx(a["synthetic_itm"], abs=1e-5)
        assert (b["web_itm"] is None) == (a["web_itm"] is None)
        if a["web_itm"] is not None:
            assert b["web_itm"] == pytest.approx(a["web_itm"], abs=1e-5)
    assert fused["status"] == manifest["status"] and fused["kept"] == manifest["kept"]
    # both models' busy time is still counted, stage by stage
    assert fused["stages"]["caption"]["images"] == fused["stages"]["filter"]["images"] == fused["status"]["ok"]
    assert fused["stages"]["caption"]["busy_seconds"] > 0 and fused["stages"]["filter"]["busy_seconds"] > 0


@pytest.mark.slow
def test_refuses_to_mix_runs(env, main_run):
    settings, _ = main_run
    with pytest.raises(BootstrapError, match="--resume"):
        run_bootstrap(settings, verbose=False)
    with pytest.raises(BootstrapError, match="num_captions"):
        run_bootstrap(settings.model_copy(update={"resume": True, "num_captions": 1}), verbose=False)


def test_a_missing_checkpoint_is_named_before_any_work(env, tmp_path):
    settings = bootstrap_settings(env["urls"], tmp_path / "out", env["ckpt"])
    with pytest.raises(ValueError, match="no-such-folder: not a checkpoint directory .*no such path"):
        run_bootstrap(settings.model_copy(update={"filter": tmp_path / "no-such-folder"}), verbose=False)
    assert not (tmp_path / "out" / "parquet").exists()


@pytest.mark.slow
def test_input_from_img2dataset_output(env, main_run):
    from img2dataset import download

    i2d = env["root"] / "i2d"
    url_list = env["world"].write_urls(env["root"] / "urls.csv", env["server"].base_url)
    download(url_list=str(url_list), output_folder=str(i2d), input_format="csv", caption_col="caption",
             output_format="webdataset",
             processes_count=1, thread_count=4, image_size=64, timeout=int(TIMEOUT), number_sample_per_shard=16,
             compute_hash=None, disallowed_header_directives=[])
    settings = bootstrap_settings(i2d, env["root"] / "from_i2d", env["ckpt"], key_col=None,
                                  save_additional_columns=["url"])
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


@pytest.mark.slow
def test_a_stage_that_raises_on_one_batch_costs_that_batch_its_rows_not_the_job(env):
    """One caption batch raises on every try: its rows leave with stage_error and the reason,
    every other row is captioned; a batch that raises once is tried again and succeeds."""
    from pipelines.bootstrap.caption_stage import CaptionStage

    ok_keys = sorted(k for k, v in env["world"].web_labels.items() if v["fetch"] == "ok")
    doomed, flaky = ok_keys[0], ok_keys[-1]
    marker = env["root"] / "flaky-raised-once"

    class FailingCaptions(CaptionStage):  # defined here: Ray ships it to the actors by value
        def pixels(self, batch, rows):  # runs inside the stage's call, as the model does
            keys = {str(batch["key"][i]) for i in rows}
            if doomed in keys:
                raise RuntimeError("CUDA out of memory (as a test makes it)")
            if flaky in keys and not marker.exists():
                marker.write_text("raised")
                raise RuntimeError("a flaky failure")
            return super().pixels(batch, rows)

    settings = bootstrap_settings(env["urls"], env["root"] / "failing", env["ckpt"], batch_size=4)
    manifest = run_bootstrap(settings, verbose=False, stages={"caption": FailingCaptions})
    rows = {r["key"]: r for r in read_output(settings.output)}
    assert manifest["output_rows"] == WORLD_ROWS == len(rows)
    failed = [r for r in rows.values() if r["status"] == "stage_error"]
    assert doomed in {r["key"] for r in failed} and 1 <= len(failed) <= 4  # the doomed key's batch only
    assert all(r["error"].startswith("caption failed: RuntimeError: CUDA out of memory") for r in failed)
    assert all(r["synthetic_captions"] == [] and not r["web_kept"] for r in failed)
    assert marker.exists() and rows[flaky]["status"] == "ok", "a batch that failed once was tried again"
    assert manifest["status"]["stage_error"] == len(failed)
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert ok and all(len(r["synthetic_captions"]) == 1 for r in ok)


@pytest.mark.slow
def test_a_caption_and_a_filter_actor_killed_mid_run_cost_no_row(env, main_run):
    """A caption actor's process and a filter actor's process each die once mid-run (os._exit,
    as an OOM kill or a lost machine ends them: no exception, no cleanup). Ray Data restarts the
    actor and runs its batch again; the output is main_run's, row for row."""
    from pipelines.bootstrap.caption_stage import CaptionStage
    from pipelines.bootstrap.filter_stage import FilterStage

    ok_keys = sorted(k for k, v in env["world"].web_labels.items() if v["fetch"] == "ok")
    victims = {"caption": (ok_keys[1], env["root"] / "caption-actor-died"),
               "filter": (ok_keys[-2], env["root"] / "filter-actor-died")}

    def dies_once(stage: str, batch, rows) -> None:
        key, marker = victims[stage]
        if key in {str(batch["key"][i]) for i in rows} and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    class DyingCaptions(CaptionStage):  # defined here: Ray ships them to the actors by value
        def pixels(self, batch, rows):
            dies_once("caption", batch, rows)
            return super().pixels(batch, rows)

    class DyingFilter(FilterStage):
        def pixels(self, batch, rows):
            dies_once("filter", batch, rows)
            return super().pixels(batch, rows)

    settings, manifest = main_run
    faulty = settings.model_copy(update={"output": str(env["root"] / "actors-killed")})
    got = run_bootstrap(faulty, verbose=False, stages={"caption": DyingCaptions, "filter": DyingFilter})
    assert all(marker.exists() for _, marker in victims.values()), "both actors died once"
    assert got["output_rows"] == manifest["output_rows"] == WORLD_ROWS and got["status"] == manifest["status"]
    want, rows = read_output(settings.output), read_output(faulty.output)
    assert [r["key"] for r in rows] == [r["key"] for r in want]
    for g, w in zip(rows, want):
        for column, value in w.items():
            if column.endswith(("_itm", "_itc")) and value is not None:  # another batch, other matmuls
                assert g[column] == pytest.approx(value, abs=1e-5), (w["key"], column)
            else:
                assert g[column] == value, (w["key"], column)
    assert sorted(s["__key__"] for s in read_samples(faulty.output)) == sorted(
        s["__key__"] for s in read_samples(settings.output))


@pytest.mark.slow
def test_additional_columns_are_carried_through(env, tmp_path):
    table = pq.read_table(env["urls"])
    table = table.append_column("license", pa.array([f"cc-{i % 3}" for i in range(table.num_rows)]))
    table = table.append_column("rank", pa.array(list(range(table.num_rows)), pa.int64()))
    source = tmp_path / "with_columns.parquet"
    pq.write_table(table, source)
    settings = bootstrap_settings(source, env["root"] / "carried", env["ckpt"], threshold=0.0,
                                  save_additional_columns=["license", "rank"])
    run_bootstrap(settings, verbose=False)
    want = {r["key"]: r for r in table.to_pylist()}
    out = pq.read_table(Path(settings.output) / "parquet")
    assert out.schema.field("rank").type == pa.int64()
    for row in out.to_pylist():
        assert (row["license"], row["rank"]) == (want[row["key"]]["license"], want[row["key"]]["rank"])
    samples = read_samples(settings.output)
    assert samples and all(json.loads(s["json"])["license"] == want[json.loads(s["json"])["key"]]["license"]
                           for s in samples)


@pytest.mark.slow
def test_download_only_then_bootstrap_from_the_fetched_images(env):
    """--download-only needs no model and writes img2dataset-like samples; a bootstrap that reads
    that folder downloads nothing again and keeps every row's key and fate."""
    fetched = Path(env["root"] / "fetched")
    before = dict(env["server"].web_requests)
    manifest = run_bootstrap(bootstrap_settings(env["urls"], fetched, None, captioner=None, filter=None,
                                                download_only=True), verbose=False)
    assert manifest["checkpoints"] == {} and set(manifest["stages"]) == {"download"}
    fetched_rows = {r["key"]: r for r in read_output(fetched)}
    ok = [k for k, r in fetched_rows.items() if r["status"] == "ok"]
    samples = read_samples(fetched)
    assert sorted(s["__key__"] for s in samples) == sorted(ok), "one sample per downloaded image"
    assert all(s["txt"].decode() == (fetched_rows[s["__key__"]]["web_caption"] or "") for s in samples)
    requests = dict(env["server"].web_requests)
    settings = bootstrap_settings(fetched, env["root"] / "from_fetched", env["ckpt"], key_col=None)
    again = run_bootstrap(settings, verbose=False)
    assert env["server"].web_requests == requests, "the second run fetched nothing"
    assert all(requests.get(k, 0) > before.get(k, 0) for k, r in fetched_rows.items() if r["status"] != "bad_row")
    rows = {r["key"]: r for r in read_output(settings.output)}
    assert set(rows) == set(fetched_rows) and again["output_rows"] == WORLD_ROWS
    for key, row in fetched_rows.items():
        assert rows[key]["status"] == row["status"] and rows[key]["web_caption"] == row["web_caption"]
        if row["status"] == "ok":
            assert len(rows[key]["synthetic_captions"]) == 1


@pytest.mark.slow
def test_openclip_trains_on_the_tars_as_they_are(main_run):
    """OpenCLIP's own WebDataset loader (open_clip_train.data.get_wds_dataset) over the output, in
    OpenCLIP's venv (Makefile): every kept pair comes out as one (image, text) sample."""
    python = os.environ.get("CAPFILT_OPENCLIP_PYTHON", str(REPO / ".venv-openclip" / "bin" / "python"))
    assert Path(python).is_file(), f"OpenCLIP's venv is missing ({python}): `make test` makes it"
    settings, manifest = main_run
    last = manifest["shards"]["total"] - 1
    kept = [c for r in read_output(settings.output) for c in ([r["web_caption"]] if r["web_kept"] else [])
            + [c for c, k in zip(r["synthetic_captions"], r["synthetic_kept"]) if k]]
    run = subprocess.run([python, str(REPO / "tests" / "openclip_loader.py"),
                          f"{settings.output}/webdataset/{{00000..{last:05d}}}.tar",
                          str(manifest["samples_in_webdataset"]), "--captions", json.dumps(kept)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert len(got["texts"]) == manifest["samples_in_webdataset"] == len(kept) > 0
    assert all(shape[1:] == [3, 32, 32] for shape in got["shapes"])
    assert sorted(got["texts"]) == sorted(got["expected"])
