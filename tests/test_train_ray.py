"""Ray Train jobs on local Ray, 2 CPU workers (gloo): one step each of pre-training and
fine-tuning with equal replicas after it, a worker killed mid-epoch, a stopped job resumed, and
bad data refused before training. Tiny model, 32 px images, a few steps."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipelines.train.data import DataError
from pipelines.train.metrics import read_metrics
from pipelines.train.settings import TrainSettings

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_pairs(path: Path, n: int, status: str = "ok") -> Path:
    """A bootstrap-like Parquet of n images, each with a web caption that is kept."""
    rng = random.Random(0)
    rows = {"key": [], "status": [], "web_caption": [], "web_kept": [], "image": []}
    for i in range(n):
        colour, side = rng.choice(list(COLOURS)), rng.choice(["left", "right"])
        image = Image.new("RGB", (32, 32), (240, 240, 240))
        x = 2 if side == "left" else 18
        ImageDraw.Draw(image).rectangle([x, 10, x + 11, 21], fill=COLOURS[colour])
        buf = io.BytesIO()
        image.save(buf, "JPEG")
        rows["key"].append(f"{i:05d}")
        rows["status"].append(status)
        rows["web_caption"].append(f"a {colour} square on the {side}")
        rows["web_kept"].append(True)
        rows["image"].append(buf.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


@pytest.fixture(scope="module")
def ray_local():
    import os

    import ray

    # on a busy 2-core machine, starting two torch workers can pass Ray Train's 60 s default
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "part-0.parquet", 48)


def settings(data: Path, output: Path, **changes) -> TrainSettings:
    values = dict(data=[str(data)], output=output, num_workers=2, batch_size=4, image_size=32,
                  warmup_steps=1, log_every=1, checkpoint_every=2, shuffle_buffer=0, max_failures=0)
    values.update(changes)
    return TrainSettings(**values)


def steps_logged(records: list[dict]) -> list[int]:
    return [r["step"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def pretrained(ray_local, data, tmp_path_factory) -> tuple[Path, dict]:
    """One pre-training step from scratch (tokenizer trained on the captions)."""
    from pipelines.train.job import run_training

    out = tmp_path_factory.mktemp("pre")
    return out, run_training(settings(data, out, max_steps=1))


def test_pretrain_then_fine_tune_one_step_with_equal_replicas(pretrained, data, tmp_path):
    from model.checkpoint import load_checkpoint
    from pipelines.train.job import run_training

    pre_dir, pre = pretrained
    assert pre["step"] == 1 and pre["world_size"] == 2 and pre["replicas_equal"] is True
    records = read_metrics(pre_dir)
    step = [r for r in records if "loss" in r][0]
    assert {"itc", "itm", "lm", "loss", "lr", "samples_per_s"} <= set(step)
    model = load_checkpoint(pre_dir / "model")
    init = load_checkpoint(pre_dir / "init")
    assert any((a != b).any() for a, b in zip(model.med.state_dict().values(), init.med.state_dict().values()))

    cap = run_training(settings(data, tmp_path / "cap", task="caption", init=pre_dir / "model", max_steps=1))
    assert cap["step"] == 1 and cap["replicas_equal"] is True
    cap_step = [r for r in read_metrics(tmp_path / "cap") if "loss" in r][0]
    assert "lm" in cap_step and "itc" not in cap_step
    assert load_checkpoint(tmp_path / "cap" / "model").extra["roles"] == ["captioner"]


def test_stopped_job_resumes_and_a_killed_worker_costs_no_finished_step(pretrained, data, tmp_path):
    """A job stopped after its step-2 checkpoint is started again on the same folder; in that run
    rank 1 dies mid-epoch after the step-4 checkpoint, and Ray Train restarts the workers from it.
    48 pairs / (4 x 2) = 6 steps an epoch: everything happens inside epoch 0."""
    from pipelines.train.job import run_training

    out = tmp_path / "job"
    job = settings(data, out, init=pretrained[0] / "model", max_steps=6)
    with pytest.raises(Exception):
        run_training(job, fault={"rank": 0, "step": 4})  # no retries: the job stops
    assert not (out / "model").exists()
    stopped = read_metrics(out)
    assert steps_logged(stopped) == [1, 2, 3]

    resilient = settings(data, out, init=pretrained[0] / "model", max_steps=6, max_failures=1)
    result = run_training(resilient, fault={"rank": 1, "step": 6})
    assert result["step"] == 6 and result["replicas_equal"] is True
    records = read_metrics(out)[len(stopped):]
    resumes = [i for i, r in enumerate(records) if r.get("event") == "resume"]
    assert [records[i]["step"] for i in resumes] == [2, 4]  # the stopped job, then the killed worker
    assert [records[i]["step_in_epoch"] for i in resumes] == [2, 4]
    assert steps_logged(records[resumes[0]:resumes[1]]) == [3, 4, 5]  # step 5 was lost with the worker
    assert steps_logged(records[resumes[1]:]) == [5, 6]  # nothing at or before a checkpoint again


def test_bad_and_empty_data_fail_before_training(ray_local, tmp_path):
    from pipelines.train.job import build_trainer

    with pytest.raises(DataError, match="path not found"):
        build_trainer(settings(tmp_path / "missing.parquet", tmp_path / "a"))
    failed = write_pairs(tmp_path / "failed" / "part-0.parquet", 4, status="download_error")
    with pytest.raises(DataError, match="no \\(image, caption\\) pairs"):
        build_trainer(settings(failed, tmp_path / "b"))
    few = write_pairs(tmp_path / "few" / "part-0.parquet", 5)
    with pytest.raises(DataError, match="less than one step needs"):
        build_trainer(settings(few, tmp_path / "c"))
    assert not (tmp_path / "b" / "ray").exists()


def test_a_bootstrap_output_reads_as_the_parquet_of_its_rows(ray_local, tmp_path):
    """A bootstrap output folder (its committed tars: one kept pair per sample, an empty tar, a
    killed run's leftover) gives the pairs that the same rows, images inline, give as Parquet."""
    from test_train_s3 import committed_shards, leftover_shard, write_bootstrap_output

    from pipelines.train.data import pair_dataset, resolve_sources

    shards = committed_shards()
    write_bootstrap_output(str(tmp_path / "boot"), shards, leftover_shard())
    columns = ("key", "status", "web_caption", "web_kept", "synthetic_captions", "synthetic_kept", "image")
    pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for rows in shards for r in rows]),
                   tmp_path / "rows.parquet")
    boot = resolve_sources([str(tmp_path / "boot")])
    flat = resolve_sources([str(tmp_path / "rows.parquet")])
    assert [s.kind for s in boot + flat] == ["webdataset", "parquet"]

    def pairs(sources) -> list[tuple[str, str, bytes]]:
        return sorted((r["caption"], r["image_key"], r["image"]) for r in pair_dataset(sources).take_all())

    from_tars = pairs(boot)
    assert len(from_tars) == 12 and from_tars == pairs(flat)


def test_relative_paths_from_the_working_directory(pretrained, data, tmp_path, monkeypatch):
    """Paths as a user types them, relative to where the command runs: Ray Train's workers run
    elsewhere, so the job must hand them absolute paths (`make demo` passes a relative --output)."""
    import shutil

    from pipelines.train.job import run_training

    pre_dir, _ = pretrained
    shutil.copytree(pre_dir / "model", tmp_path / "init")
    shutil.copy(data, tmp_path / "pairs.parquet")
    monkeypatch.chdir(tmp_path)
    result = run_training(settings(Path("pairs.parquet"), Path("cap"), task="caption", init=Path("init"),
                                   num_workers=1, max_steps=1))
    assert (tmp_path / "cap" / "model" / "config.json").is_file()
    assert result["step"] == 1
