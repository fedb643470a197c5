"""Downstream tasks' pieces, fast: metrics, answer ranking against brute force, task checkpoints
and their kinds, bad task data named by file and row, the CLI listing and running every task."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from capfilt.cli import main
from capfilt.world.make import make_world
from capfilt.world.settings import WorldMakeSettings
from model.checkpoint import save_checkpoint
from model.tasks.checkpoint import load_for, load_head, save_task_checkpoint
from model.tasks.nlvr import NLVRHead, nlvr_logits
from model.tasks.ranking import rank_metrics, rank_of
from model.tasks.video import uniform_frames
from model.tasks.vqa import (
    answer_logprob, answer_weights, decoder_logits, question_states, rank_answers, vqa_accuracy,
)
from model.weights_io import CheckpointError
from pipelines.train.data import DataError
from pipelines.train.settings import EvaluateSettings
from pipelines.train.tasks.data import read_task
from pipelines.train.tasks.step import TaskModel
from tests.task_helpers import tiny_med, world_tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "world"
    make_world(WorldMakeSettings(out=out, size=1, human_size=12, val_size=6, test_size=6, nlvr2_pairs=18,
                                 clips=10, workers=1))
    return out


@pytest.fixture(scope="module")
def tokenizer(world):
    return world_tokenizer(world)


# ---- metrics ------------------------------------------------------------------------------------
def test_vqa_accuracy_counts_annotators_up_to_three():
    ten = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("red", ten) == pytest.approx(2 / 3)
    assert vqa_accuracy("Blue ", ten) == 1.0
    assert vqa_accuracy("green", ten) == 0.0
    assert vqa_accuracy("top", ["top", "at the top"]) == 1.0  # a world row: canonical answer + synonym
    assert answer_weights(["a", "b", "a", "a"]) == [("a", 0.75), ("b", 0.25)]


def test_rank_metrics_and_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9])
    assert rank_of(scores, 1) == 1 and rank_of(scores, 2) == 3 and rank_of(scores, 0) == 4
    assert rank_of(scores, [0, 2]) == 3  # the best-ranked of several true items
    m = rank_metrics([1, 3, 12])
    assert m["r@1"] == pytest.approx(1 / 3) and m["r@5"] == pytest.approx(2 / 3) and m["r@10"] == pytest.approx(2 / 3)
    assert m["median_rank"] == 3 and m["mean_rank"] == pytest.approx(16 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)


def test_uniform_frames_spread_over_the_clip():
    assert uniform_frames(8, 4) == [1, 3, 5, 7]
    assert uniform_frames(3, 8) == [0, 1, 2]
    assert uniform_frames(10, 1) == [5]


# ---- models ---------------------------------------------------------------------------------------
def test_rank_answers_picks_the_likeliest_answer_of_the_top_k(tokenizer):
    med = TaskModel("vqa", tiny_med(tokenizer)).med.eval()
    answers = ["red", "blue", "two", "top left", "yes", "no"]
    a_ids, a_mask = tokenizer.encode(answers, 16)
    q_ids, q_mask = tokenizer.encode(["what colour is the circle?", "how many objects are there?"], 16)
    with torch.no_grad():
        states = question_states(med, med.encode_image(torch.randn(2, 3, 32, 32)), q_ids, q_mask)
        picked = rank_answers(med, states, q_mask, a_ids, a_mask, k=len(answers))
        for q in range(2):
            n = len(answers)
            logits = decoder_logits(med, a_ids, a_mask, states[q : q + 1].expand(n, -1, -1), q_mask[q : q + 1].expand(n, -1))
            assert int(picked[q]) == int(answer_logprob(logits, a_ids, a_mask).argmax())


def test_vqa_and_nlvr2_checkpoints_load_back_as_saved(tokenizer, tmp_path):
    vqa = TaskModel("vqa", tiny_med(tokenizer))
    assert not vqa.med.tied  # BLIP's VQA model has its own decoder
    path = save_task_checkpoint(tmp_path / "vqa", vqa.med, tokenizer, "vqa")
    loaded = load_for(path, "evaluate:vqa")
    assert loaded.roles == ("vqa",) and loaded.extra["task"] == "vqa"
    ids, mask = tokenizer.encode(["is there a red star?"], 16)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(vqa.med.eval().state_dict().values(), loaded.med.state_dict().values()):
            assert torch.equal(a, b)
        nlvr = TaskModel("nlvr2", tiny_med(tokenizer, seed=1)).eval()
        path = save_task_checkpoint(tmp_path / "nlvr2", nlvr.med, tokenizer, "nlvr2", nlvr.head)
        ck = load_for(path, "evaluate:nlvr2")
        head = NLVRHead(ck.med)
        assert load_head(ck, head)
        e = nlvr.med.encode_image(torch.cat([image, -image]))
        before = nlvr_logits(nlvr.med, nlvr.head, ids, mask, e[:1], e[1:])
        e2 = ck.med.encode_image(torch.cat([image, -image]))
        assert torch.allclose(before, nlvr_logits(ck.med, head.eval(), ids, mask, e2[:1], e2[1:]), atol=1e-5)


def test_a_checkpoint_of_the_wrong_kind_is_refused(tokenizer, tmp_path):
    med = tiny_med(tokenizer)
    nlvr = save_task_checkpoint(tmp_path / "nlvr2", med, tokenizer, "nlvr2", NLVRHead(med))
    captioner = save_checkpoint(tmp_path / "captioner", tiny_med(tokenizer), tokenizer, extra={"roles": ["captioner"]})
    with pytest.raises(CheckpointError, match="trained as nlvr2 cannot be used to evaluate caption"):
        load_for(nlvr, "evaluate:caption")
    with pytest.raises(CheckpointError, match="trained as nlvr2 cannot be used to finetune vqa"):
        load_for(nlvr, "finetune:vqa")
    with pytest.raises(CheckpointError, match="trained as captioner cannot be used to evaluate nlvr2"):
        load_for(captioner, "evaluate:nlvr2")
    with pytest.raises(CheckpointError, match="cannot be used to evaluate video_retrieval"):
        load_for(captioner, "evaluate:video_retrieval")
    load_for(captioner, "finetune:nlvr2")  # a pre-trained model starts any fine-tune


# ---- bad data -------------------------------------------------------------------------------------
def _rewrite(world, name: str, tmp_path, change) -> str:
    rows = pq.read_table(world / "tasks" / f"{name}.parquet").to_pylist()
    change(rows)
    path = tmp_path / "tasks" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    (tmp_path / "images").exists() or (tmp_path / "images").symlink_to(world / "images")
    return str(path)


def test_bad_task_data_names_the_file_and_the_row(world, tmp_path):
    def drop_question(rows):
        rows[3]["question"] = None

    path = _rewrite(world, "vqa", tmp_path, drop_question)
    with pytest.raises(DataError, match=rf"{path}, row 3: missing field 'question'"):
        read_task("vqa", [path], None)

    (tmp_path / "broken.png").write_bytes(b"not a png")

    def broken_image(rows):
        rows[2]["right_image"] = str(tmp_path / "broken.png")

    path = _rewrite(world, "nlvr2", tmp_path, broken_image)
    with pytest.raises(DataError, match=rf"{path}, row 2: image '.*broken.png' \(right_image\) does not open"):
        read_task("nlvr2", [path], None)

    def bad_index(rows):
        rows[1]["rounds"][0]["answer_index"] = 99

    path = _rewrite(world, "dialog", tmp_path, bad_index)
    with pytest.raises(DataError, match=rf"{path}, row 1: rounds\[0\]: 'answer_index' 99"):
        read_task("dialog", [path], None)
    with pytest.raises(DataError, match=r"no vqa rows of split 'nosuch' in .*vqa.parquet"):
        read_task("vqa", [str(world / "tasks/vqa.parquet")], "nosuch")


# ---- CLI --------------------------------------------------------------------------------------------
def test_help_lists_every_task(capsys):
    main(["finetune", "--help"])
    out = capsys.readouterr().out
    for task in ("caption", "filter", "retrieval", "vqa", "nlvr2", "dialog"):
        assert task in out
    main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for task in ("retrieval", "caption", "vqa", "nlvr2", "dialog", "video_retrieval", "video_qa"):
        assert task in out


def test_a_downstream_task_is_evaluated_alone(tmp_path):
    with pytest.raises(ValueError, match="vqa reads its own task data"):
        EvaluateSettings(checkpoint=tmp_path, data=["x"], tasks=["vqa", "caption"])


def test_evaluate_every_downstream_task_from_the_cli(world, tokenizer, tmp_path, capsys):
    vqa = TaskModel("vqa", tiny_med(tokenizer))
    vqa_ck = save_task_checkpoint(tmp_path / "vqa", vqa.med, tokenizer, "vqa")
    nlvr = TaskModel("nlvr2", tiny_med(tokenizer))
    nlvr_ck = save_task_checkpoint(tmp_path / "nlvr2", nlvr.med, tokenizer, "nlvr2", nlvr.head)
    dialog_ck = save_task_checkpoint(tmp_path / "dialog", tiny_med(tokenizer), tokenizer, "dialog")
    pretrained = save_checkpoint(tmp_path / "pre", tiny_med(tokenizer), tokenizer, extra={"roles": ["captioner", "filter"]})
    t = world / "tasks"
    runs = {
        "vqa": (vqa_ck, [t / "vqa.parquet"], ["--inference", "generate"], "accuracy"),
        "nlvr2": (nlvr_ck, [t / "nlvr2.parquet"], [], "accuracy"),
        "dialog": (dialog_ck, [t / "dialog.parquet"], [], "mrr"),
        "video_retrieval": (pretrained, [t / "clips.parquet"], ["--frames", "2", "--split", "train"], "t2v_median_rank"),
        "video_qa": (vqa_ck, [t / "clips_qa.parquet", t / "clips.parquet"], ["--frames", "2", "--split", "train"],
                     "accuracy"),
    }
    for task, (ck, data, extra, metric) in runs.items():
        out = tmp_path / f"{task}.json"
        args = ["evaluate", "--tasks", task, "--checkpoint", str(ck), "--output", str(out), "--max-images", "4",
                "--k-answers", "8"]
        for d in data:
            args += ["--data", str(d)]
        assert main(args + extra) == 0, task
        assert metric in json.loads(out.read_text())[task]
    capsys.readouterr()
    # the wrong kind: the NLVR2 model asked to caption, the captioner asked for video QA
    assert main(["evaluate", "--tasks", "caption", "--checkpoint", str(nlvr_ck), "--data", str(world / "test.parquet")]) == 2
    assert "trained as nlvr2 cannot be used to evaluate caption" in capsys.readouterr().err
    assert main(["evaluate", "--tasks", "video_qa", "--checkpoint", str(pretrained), "--data", str(t / "clips_qa.parquet"),
                 "--data", str(t / "clips.parquet")]) == 2
    assert "cannot be used to evaluate video_qa" in capsys.readouterr().err


def test_bootstrap_refuses_a_task_model_as_captioner_before_any_work(tokenizer, tmp_path, capsys):
    med = tiny_med(tokenizer)
    nlvr = save_task_checkpoint(tmp_path / "nlvr2", med, tokenizer, "nlvr2", NLVRHead(med))
    captioner = save_checkpoint(tmp_path / "captioner", tiny_med(tokenizer), tokenizer, extra={"roles": ["captioner"]})
    web = tmp_path / "web.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.png"], "caption": ["a red square"]}), web)
    base = ["bootstrap", "--input", str(web), "--allow-private-hosts"]
    assert main(base + ["--output", str(tmp_path / "a"), "--captioner", str(nlvr), "--filter", str(captioner)]) != 0
    assert "trained as nlvr2 cannot be the captioner" in capsys.readouterr().err
    assert main(base + ["--output", str(tmp_path / "b"), "--captioner", str(captioner), "--filter", str(captioner)]) != 0
    assert "trained as captioner cannot be the filter" in capsys.readouterr().err
