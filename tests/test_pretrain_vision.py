"""`capfilt model pretrain-vision`: the ViT's supervised warm-up learns, changes only the ViT, and
writes a checkpoint the training jobs start from; bad input fails before any work."""

import json

import pytest
import torch

from capfilt.cli import main
from capfilt.world.vision_labels import PATCH_LABELS, PRESENT_LABELS, labelled_pictures
from model.checkpoint import load_checkpoint
from model.config import preset
from model.med import MED
from pipelines.train.vision_warmup import warm_up_vision, warmup_loss, WarmupHeads


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "init"
    assert main(["model", "init", "--output", str(out), "--seed", "1"]) == 0
    return out


def _classes():
    return {name: len(values) for name, values in PATCH_LABELS.items()}


@pytest.mark.slow
def test_warm_up_fits_a_fixed_batch_and_moves_only_the_vit():
    torch.manual_seed(0)
    med = MED(preset("tiny", vocab_size=128))
    before = {k: v.clone() for k, v in med.state_dict().items()}
    batch = labelled_pictures(0, "vision-test", 0, 16, side=64, patch=8)
    heads = WarmupHeads(med.config.vision_width, _classes(), len(PRESENT_LABELS))
    with torch.no_grad():
        start = float(warmup_loss(med, heads, batch, torch.device("cpu")))
    curve = warm_up_vision(med, lambda step: batch, patch_classes=_classes(), present_classes=len(PRESENT_LABELS),
                           steps=60, warmup_steps=5, eval_batch=batch, eval_every=30)
    assert [entry["step"] for entry in curve] == [30, 60]
    assert curve[-1]["loss"] < 0.6 * start
    # it has learnt the colours of the batch it saw, far above chance (1 in 8)
    assert curve[-1]["object_colour"] > 0.8
    after = med.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision.") for k in changed)


def test_command_writes_a_checkpoint_with_a_new_vit_and_the_same_text_side(init_dir, tmp_path, capsys):
    out = tmp_path / "warm"
    assert main(["model", "pretrain-vision", str(init_dir), "--output", str(out), "--steps", "4",
                 "--eval-every", "2", "--eval-pictures", "10", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["step"] for line in printed[:-1]] == [2, 4]
    assert printed[-1].startswith(f"wrote {out}")
    src, warm = load_checkpoint(init_dir), load_checkpoint(out)
    assert warm.sha256 != src.sha256 and warm.roles == src.roles and warm.config == src.config
    record = warm.extra["vision_pretraining"]
    assert record["from_sha256"] == src.sha256 and record["settings"]["steps"] == 4
    assert record["final"]["step"] == 4 and "object_shape" in record["final"]
    a, b = src.med.state_dict(), warm.med.state_dict()
    assert not torch.equal(a["vision.embeddings.patch_embedding.weight"], b["vision.embeddings.patch_embedding.weight"])
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("vision."))
    # the pre-training job takes it as its start
    from pipelines.train.settings import TrainSettings

    assert TrainSettings(task="pretrain", data=["-"], output=tmp_path / "pre", init=out).init == out


def test_bad_input_fails_before_training(init_dir, tmp_path, capsys):
    assert main(["model", "pretrain-vision", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 1
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert main(["model", "pretrain-vision", str(init_dir), "--output", str(init_dir), "--overwrite"]) == 1
    assert "must differ" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["model", "pretrain-vision", str(init_dir), "--output", str(tmp_path / "full")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["model", "pretrain-vision", str(init_dir), "--output", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
