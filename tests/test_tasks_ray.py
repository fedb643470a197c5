"""`capfilt finetune vqa|nlvr2|dialog|retrieval` as Ray Train jobs on local Ray: a job checkpoints, a job
started again on its folder resumes where it stopped, the final model is a task checkpoint that
evaluation takes, and a wrong-kind start or bad data is refused before any worker starts."""

from __future__ import annotations

import json

import pytest

from capfilt.cli import main
from model.checkpoint import save_checkpoint
from model.tasks.checkpoint import load_for, load_head
from model.tasks.nlvr import NLVRHead
from pipelines.train.metrics import read_metrics
from pipelines.train.tasks.job import run_task_training
from pipelines.train.tasks.settings import TaskFinetuneSettings
from tests.task_helpers import make_task_world, tiny_med, world_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import os

    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # address="local": a Ray of its own, even when another one runs on the machine
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_task_world(tmp_path_factory.mktemp("tasks") / "world")


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory):
    tokenizer = world_tokenizer(world)
    return save_checkpoint(tmp_path_factory.mktemp("pre") / "model", tiny_med(tokenizer), tokenizer,
                           extra={"roles": ["captioner", "filter"]})


def test_nlvr2_job_checkpoints_resumes_and_writes_a_task_checkpoint(ray_local, world, pretrained, tmp_path):
    out = tmp_path / "nlvr2"
    common = dict(task="nlvr2", data=[str(world / "tasks/nlvr2.parquet")], output=out, init=pretrained,
                  batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=1)
    first = run_task_training(TaskFinetuneSettings(**common, max_steps=2))
    assert first["step"] == 2
    second = run_task_training(TaskFinetuneSettings(**common, max_steps=4))
    assert second["step"] == 4
    records = read_metrics(out)
    resumes = [r for r in records if r.get("event") == "resume"]
    assert resumes and resumes[-1]["step"] == 2  # the second start went on from the first's checkpoint
    steps = [r["step"] for r in records if "nlvr" in r]
    assert steps == [1, 2, 3, 4]  # no step twice
    # the records of the cycle every training job shares (pipelines/train/worker.py)
    assert [r["total_steps"] for r in records if "nlvr" in r] == [2, 2, 4, 4]
    assert [r["replicas_equal"] for r in records if r.get("event") == "done"] == [True, True]
    ck = load_for(out / "model", "evaluate:nlvr2")
    assert ck.roles == ("nlvr2",) and ck.extra["task"] == "nlvr2"
    assert load_head(ck, NLVRHead(ck.med))


def test_vqa_dialog_and_retrieval_from_the_cli_and_refusals_before_training(ray_local, world, pretrained, tmp_path, capsys):
    vqa = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--data", str(world / "tasks/vqa.parquet"), "--output", str(vqa),
                 "--init", str(pretrained), "--max-steps", "2", "--batch-size", "4"]) == 0
    assert load_for(vqa / "model", "evaluate:vqa").roles == ("vqa",)
    dialog = tmp_path / "dialog"
    assert main(["finetune", "dialog", "--data", str(world / "tasks/dialog.parquet"), "--output", str(dialog),
                 "--init", str(pretrained), "--max-steps", "1", "--batch-size", "2"]) == 0
    assert json.loads((dialog / "model" / "extra.json").read_text())["roles"] == ["dialog"]
    retrieval = tmp_path / "retrieval"  # the filter's recipe under the task's name
    assert main(["finetune", "retrieval", "--data", str(world / "human.parquet"), "--output", str(retrieval),
                 "--init", str(pretrained), "--max-steps", "1", "--batch-size", "4"]) == 0
    assert load_for(retrieval / "model", "evaluate:video_retrieval").roles == ("filter",)
    capsys.readouterr()
    # a VQA model is not where an NLVR2 fine-tune starts
    assert main(["finetune", "nlvr2", "--data", str(world / "tasks/nlvr2.parquet"), "--output", str(tmp_path / "x"),
                 "--init", str(vqa / "model"), "--max-steps", "1"]) == 2
    assert "trained as vqa cannot be used to finetune nlvr2" in capsys.readouterr().err
    # VQA questions are not NLVR2 pairs
    assert main(["finetune", "nlvr2", "--data", str(world / "tasks/vqa.parquet"), "--output", str(tmp_path / "y"),
                 "--init", str(pretrained), "--max-steps", "1"]) == 2
    assert "vqa.parquet, row 0: missing field 'label'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
