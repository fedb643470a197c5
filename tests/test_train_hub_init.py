"""A caption fine-tune whose --init is a hub name, resolved offline from a cache the test writes;
its metrics carry the progress a person reads (steps done of the total, rate, ETA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.train.metrics import read_metrics
from pipelines.train.settings import TrainSettings
from test_hub_checkpoints import CAP_SHA, make_hub_cache
from test_train_ray import write_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub_ray(tmp_path_factory):
    import ray

    cache = tmp_path_factory.mktemp("hub")
    make_hub_cache(cache)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(cache))  # before Ray starts: the train workers inherit it
    mp.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield cache
    ray.shutdown()
    mp.undo()


def test_fine_tune_from_a_hub_name_reports_progress(hub_ray, tmp_path):
    from model.checkpoint import load_checkpoint
    from pipelines.train.job import run_training

    data = write_pairs(tmp_path / "pairs" / "part-0.parquet", 24)
    settings = TrainSettings(data=[str(data)], output=tmp_path / "cap", task="caption", init=Path("org/cap"),
                             num_workers=1, batch_size=4, image_size=32, warmup_steps=1, log_every=1,
                             checkpoint_every=100, shuffle_buffer=0, max_failures=0, max_steps=3)
    result = run_training(settings)
    assert result["step"] == 3
    steps = [r for r in read_metrics(tmp_path / "cap") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["total_steps"] == 3 and r["steps_per_s"] > 0 and r["samples_per_s"] > 0 for r in steps)
    assert steps[-1]["eta_s"] == 0 and all(r["eta_s"] is not None for r in steps)
    trained = load_checkpoint(tmp_path / "cap" / "model")
    start = load_checkpoint(f"org/cap@{CAP_SHA}")
    assert trained.config.vocab_size == start.config.vocab_size
    assert any((a != b).any() for a, b in zip(trained.med.state_dict().values(), start.med.state_dict().values()))
