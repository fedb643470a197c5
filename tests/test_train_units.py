"""Training pieces without Ray: schedule, optimiser groups, augmentation, pairs, checkpoint state, data errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.train.augment import collate, image_id, random_resized_crop
from pipelines.train.data import DataError, resolve_source, resolve_sources
from pipelines.train.optim import (
    lr_at,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    total_steps,
)
from pipelines.train.pairs import decode_image, rows_to_pairs
from pipelines.train.settings import TrainSettings


def jpeg(colour=(200, 30, 30), size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG")
    return buf.getvalue()


def objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# ---- schedule and optimiser -------------------------------------------------------------------
def test_warmup_then_cosine_decay():
    kw = dict(lr=1e-3, min_lr=1e-6, warmup_steps=10, total_steps=110, decay="cosine")
    lrs = [lr_at(s, **kw) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rises through warm-up
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only falls
    assert lrs[110] == pytest.approx(1e-6)
    assert lr_at(60, **kw) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-6)  # half-way of the cosine


def test_linear_and_constant_decay():
    kw = dict(lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10)
    assert lr_at(5, decay="linear", **kw) == pytest.approx(0.5)
    assert lr_at(9, decay="constant", **kw) == pytest.approx(1.0)


def test_scheduler_state_resumes_the_schedule():
    model = torch.nn.Linear(4, 4)
    kw = dict(lr=1e-2, min_lr=1e-5, warmup_steps=3, total_steps=20, decay="cosine")
    opt = make_optimizer(model, 1e-2)
    sched = make_scheduler(opt, **kw)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = make_optimizer(model, 1e-2)
    sched2 = make_scheduler(opt2, **kw)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(7, **kw))


def test_weight_decay_spares_biases_norms_and_temperature():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.temp = torch.nn.Parameter(torch.tensor(0.07))
            self.shared = self.proj  # a shared module is counted once

    decay, no_decay = parameter_groups(M(), 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 1  # proj.weight only
    assert len(no_decay["params"]) == 4  # proj.bias, norm.weight, norm.bias, temp


def test_total_steps_equal_per_worker():
    assert total_steps(100, 8, 2, epochs=3, max_steps=None) == 6 * 3
    assert total_steps(100, 8, 2, epochs=3, max_steps=5) == 5


# ---- augmentation ------------------------------------------------------------------------------
def test_crop_never_flips_left_and_right():
    """A bright left half stays on the left under every crop the job can draw."""
    images = torch.zeros(16, 3, 32, 32)
    images[:, :, :, :16] = 1.0
    out = random_resized_crop(images, 0.8, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    left, right = out[:, :, :, :8].mean(dim=(1, 2, 3)), out[:, :, :, -8:].mean(dim=(1, 2, 3))
    assert bool((left > right).all())


def test_crop_is_reproducible_from_the_generator_state():
    images = torch.rand(4, 3, 16, 16)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = random_resized_crop(images, 0.5, g)
    g.set_state(state)
    assert torch.equal(a, random_resized_crop(images, 0.5, g))
    assert torch.equal(random_resized_crop(images, 1.0, g), images)


def test_collate_builds_the_step_batch():
    from model.config import preset
    from model.tokenizer import train_wordpiece

    tok = train_wordpiece(["a red square on the left", "a blue circle"] * 5, vocab_size=64)
    config = preset("tiny", image_size=24, vocab_size=tok.vocab_size, tokens=tok.ids)
    batch = {"image": np.stack([decode_image(jpeg(), 24)] * 3), "caption": objects(["a red square", "a blue circle", "a red square"]),
             "image_key": objects(["x", "y", "x"])}
    out = collate(batch, config=config, tokenizer=tok, max_text_len=16, generator=None, crop_scale_min=1.0,
                  prefix="a picture of ")
    assert out["pixel_values"].shape == (3, 3, 24, 24)
    assert out["input_ids"].shape[0] == 3 and out["attention_mask"].shape == out["input_ids"].shape
    ids = out["image_ids"].tolist()
    assert ids[0] == ids[2] != ids[1] and ids[0] == image_id("x") >= 0


# ---- pairs ------------------------------------------------------------------------------------
def test_bootstrap_rows_give_one_pair_per_kept_caption():
    batch = {
        "key": objects(["a", "b", "c"]),
        "status": objects(["ok", "download_error", "ok"]),
        "web_caption": objects(["web a", "web b", "web c"]),
        "web_kept": np.array([True, True, False]),
        "synthetic_captions": objects([["s1", "s2"], [], ["s3", "s4"]]),
        "synthetic_kept": objects([[False, True], [], [True, True]]),
        "image": objects([jpeg(), None, jpeg()]),
    }
    out = rows_to_pairs(batch)
    assert list(out["caption"]) == ["web a", "s2", "s3", "s4"]
    assert list(out["image_key"]) == ["a", "a", "c", "c"]


def test_world_split_rows_read_image_paths_relative_to_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.jpg").write_bytes(jpeg())
    batch = {"image_id": objects(["x", "x", "y"]), "image": objects(["images/x.jpg", "images/x.jpg", "images/missing.jpg"]),
             "caption": objects(["one", "two", "three"]), "path": objects([str(tmp_path / "split.parquet")] * 3)}
    out = rows_to_pairs(batch)
    assert list(out["caption"]) == ["one", "two"]  # the unreadable image drops its pair
    assert out["image"][0] == jpeg()


def test_webdataset_rows_one_caption_per_sample_and_img2dataset_status():
    batch = {"__key__": objects(["0", "1", "2", "3"]), "jpg": objects([jpeg(), jpeg(), jpeg(), jpeg()]),
             "txt": objects([b"first line\nsame caption\n", b"third", b"fourth", b"  "]),
             "json": objects([b'{"status": "success", "key": "0"}', b'{"status": "success"}',
                              b'{"status": "failed_to_download"}', b'{"status": "success"}'])}
    out = rows_to_pairs(batch)
    # a .txt is one caption, whatever it holds; an empty one gives no pair
    assert list(out["caption"]) == ["first line\nsame caption", "third"]
    assert list(out["image_key"]) == ["0", "1"]


def test_bootstrap_samples_of_one_image_share_its_key():
    """Samples `k_web` and `k_syn0` are one image: ITC and ITM take the row key from the .json."""
    meta = [{"key": "a.b/c", "status": "ok", "caption_source": "web"},
            {"key": "a.b/c", "status": "ok", "caption_source": "synthetic"},
            {"key": "d", "status": "ok"}]
    batch = {"__key__": objects(["a%2Eb%2Fc_web", "a%2Eb%2Fc_syn0", "d"]),
             "jpg": objects([jpeg(), jpeg(), jpeg((0, 0, 200))]),
             "txt": objects([b"a red square", b"a picture of a red square", b"a blue square"]),
             "json": objects([json.dumps(m).encode() for m in meta]),
             "path": objects(["s3://b/boot/webdataset/00000.tar"] * 3)}
    out = rows_to_pairs(batch)
    assert list(out["caption"]) == ["a red square", "a picture of a red square", "a blue square"]
    assert list(out["image_key"]) == ["a.b/c", "a.b/c", "d"]
    ids = [image_id(k) for k in out["image_key"]]
    assert ids[0] == ids[1] != ids[2]


def test_webdataset_key_falls_back_on_the_sample_name():
    batch = {"__key__": objects(["s0", "s1"]), "jpg": objects([jpeg(), jpeg()]), "txt": objects([b"one", b"two"]),
             "json": objects([b"not json", None])}
    assert list(rows_to_pairs(batch)["image_key"]) == ["s0", "s1"]
    no_json = {"__key__": objects(["s2"]), "png": objects([jpeg()]), "txt": objects(["three"])}
    assert list(rows_to_pairs(no_json)["image_key"]) == ["s2"]


def test_empty_batch_gives_empty_pairs():
    out = rows_to_pairs({})
    assert {k: len(v) for k, v in out.items()} == {"image": 0, "caption": 0, "image_key": 0}


def test_image_paths_read_through_a_given_filesystem(tmp_path):
    """A Parquet split on object storage: its relative image paths are read with its filesystem,
    whose paths (no protocol) Ray Data's `path` column holds."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket/world/images/x.jpg", jpeg())
    batch = {"image_id": objects(["x", "y"]), "image": objects(["images/x.jpg", "images/y.jpg"]),
             "caption": objects(["one", "two"]), "path": objects(["/bucket/world/human.parquet"] * 2)}
    out = rows_to_pairs(batch, fs=fs)
    assert list(out["caption"]) == ["one"] and out["image"][0] == jpeg()


def test_undecodable_image_is_none():
    assert decode_image(b"not an image", 16) is None
    assert decode_image(jpeg(size=40), 16).shape == (16, 16, 3)


# ---- data errors before training -------------------------------------------------------------------
def test_bad_paths_fail_with_the_path_named(tmp_path):
    with pytest.raises(DataError, match="path not found: .*nowhere"):
        resolve_sources([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Parquet or WebDataset"):
        resolve_source(str(tmp_path / "empty"))
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="neither a .parquet"):
        resolve_source(str(tmp_path / "notes.csv"))


def test_a_whole_toy_world_asks_for_a_split(tmp_path):
    (tmp_path / "scenes.jsonl").write_text("")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match="name a split: .*human.parquet"):
        resolve_source(str(tmp_path))


def test_source_kinds(tmp_path):
    from pipelines.bootstrap.layout import OutputLayout, shard_files
    from pipelines.bootstrap.storage import Storage

    boot = tmp_path / "boot"
    storage = Storage(str(boot))
    storage.put("_work/run.json", b"{}")
    for shard in (0, 1, 2):
        storage.put(shard_files(shard)["parquet"], b"")
        storage.put(shard_files(shard)["webdataset"], b"")
    with pytest.raises(DataError, match="bootstrap output with no committed shard yet"):
        resolve_source(str(boot))
    for shard in (0, 2):  # shard 1 is a killed run's leftover
        OutputLayout(storage).write_marker(shard, {"files": shard_files(shard)})
    source = resolve_source(str(boot))
    # bootstrap: the committed shards' tars, which hold the images and one kept pair per sample
    assert source.kind == "webdataset" and source.local
    assert source.files == (str(boot / "webdataset" / "00000.tar"), str(boot / "webdataset" / "00002.tar"))
    i2d = tmp_path / "i2d"
    i2d.mkdir()
    (i2d / "00000.tar").write_bytes(b"")
    (i2d / ".00001.tar.tmp").write_bytes(b"")
    pq.write_table(pa.table({"key": ["a"]}), i2d / "00000.parquet")
    source = resolve_source(str(i2d))
    assert source.kind == "webdataset"  # img2dataset: the shards hold the images
    assert source.files == (str(i2d / "00000.tar"),)
    split = tmp_path / "world" / "human.parquet"
    split.parent.mkdir()
    pq.write_table(pa.table({"key": ["a"]}), split)
    assert resolve_source(f"file://{split}").files == (str(split),)


def test_relative_paths_resolve_absolute(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "d" / "part.parquet")
    monkeypatch.chdir(tmp_path)
    assert resolve_source("d").files == (str(tmp_path / "d" / "part.parquet"),)


def test_settings_refuse_fine_tune_without_init(tmp_path):
    with pytest.raises(ValueError, match="starts from a checkpoint"):
        TrainSettings(task="caption", data=["x"], output=tmp_path)
    with pytest.raises(ValueError, match="checkpoint folder not found"):
        TrainSettings(task="filter", data=["x"], output=tmp_path, init=tmp_path / "none")


# ---- checkpoint state ----------------------------------------------------------------------------
def test_train_state_round_trip(tmp_path):
    from model.config import preset
    from model.med import MED
    from model.tokenizer import train_wordpiece
    from pipelines.train.state import (
        Progress,
        load_rng,
        load_train_state,
        save_rng,
        save_train_state,
    )
    from pipelines.train.step import build_task

    tok = train_wordpiece(["a red square on the left"] * 5, vocab_size=64)
    config = preset("tiny", image_size=16, vocab_size=tok.vocab_size, tokens=tok.ids,
                    vision_layers=1, text_layers=1)
    settings = TrainSettings(data=["x"], output=tmp_path, queue_size=8)
    task = build_task(settings, MED(config), tok)
    opt = make_optimizer(task, 1e-3)
    sched = make_scheduler(opt, lr=1e-3, min_lr=1e-6, warmup_steps=2, total_steps=10, decay="cosine")
    opt.step()
    sched.step()
    task.momentum.queue_ptr.fill_(5)
    g = torch.Generator().manual_seed(1)
    save_train_state(tmp_path, task=task, tokenizer=tok, optimizer=opt, scheduler=sched,
                     progress=Progress(epoch=1, step=7, step_in_epoch=3, samples=56), settings_json={})
    save_rng(tmp_path, 0, {"augment": g})
    expected = torch.rand(3, generator=g)

    from model.checkpoint import load_checkpoint

    task2 = build_task(settings, load_checkpoint(tmp_path / "model").med, tok)
    opt2 = make_optimizer(task2, 1e-3)
    sched2 = make_scheduler(opt2, lr=1e-3, min_lr=1e-6, warmup_steps=2, total_steps=10, decay="cosine")
    progress = load_train_state(tmp_path, task=task2, optimizer=opt2, scheduler=sched2)
    assert progress == Progress(epoch=1, step=7, step_in_epoch=3, samples=56)
    assert int(task2.momentum.queue_ptr) == 5
    assert sched2.last_epoch == 1
    g2 = torch.Generator()
    assert load_rng(tmp_path, 0, {"augment": g2}) and torch.equal(torch.rand(3, generator=g2), expected)
    assert not load_rng(tmp_path, 1, {"augment": g2})
    for a, b in zip(task.med.state_dict().values(), task2.med.state_dict().values()):
        assert torch.equal(a, b)
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 7


def test_caption_label_smoothing_setting_reaches_the_loss(tmp_path):
    """--label-smoothing changes the caption task's LM loss: with 0 it is the plain cross-entropy
    of the targets; BLIP's 0.1 adds the smoothed tail."""
    import torch.nn.functional as F

    from model.config import preset
    from model.med import MED
    from model.tokenizer import train_wordpiece
    from pipelines.train.step import build_task

    tok = train_wordpiece(["a picture of a red square on the left", "a blue circle"] * 5, vocab_size=64)
    config = preset("tiny", image_size=16, vocab_size=tok.vocab_size, tokens=tok.ids,
                    vision_layers=1, text_layers=1)
    torch.manual_seed(0)
    med = MED(config).eval()
    ids, mask = tok.encode(["a picture of a red square", "a picture of a blue circle"], 12)
    batch = {"pixel_values": torch.randn(2, 3, 16, 16), "input_ids": ids, "attention_mask": mask}
    losses = {}
    for eps in (0.0, 0.1):
        settings = TrainSettings(task="caption", data=["x"], output=tmp_path, init=tmp_path, label_smoothing=eps)
        task = build_task(settings, med, tok)
        assert task.label_smoothing == eps
        losses[eps] = float(task.step(batch)["lm"])
    # the plain cross-entropy over the unmasked targets, computed here from the logits
    from model.losses import lm_targets

    targets = lm_targets(ids, mask, config.tokens.pad, len(tok.encode_prompt("a picture of ")))
    logits = med.lm_logits(ids, mask, med.encode_image(batch["pixel_values"]))
    logp = F.log_softmax(logits[:, :-1].reshape(-1, logits.shape[-1]), dim=-1)
    labels = targets[:, 1:].reshape(-1)
    counted = labels != -100
    nll = -logp[counted].gather(1, labels[counted, None]).mean()
    uniform = -logp[counted].mean()  # cross-entropy against the uniform distribution
    assert abs(losses[0.0] - float(nll)) < 1e-4
    assert abs(losses[0.1] - float(0.9 * nll + 0.1 * uniform)) < 1e-4
    assert abs(losses[0.1] - losses[0.0]) > 1e-5  # the two settings really gave two losses
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainSettings(data=["x"], output=tmp_path, label_smoothing=1.0)


# ---- commands -------------------------------------------------------------------------------------
def test_commands_refuse_bad_data_and_missing_init_before_any_work(tmp_path, capsys):
    from capfilt.cli import main

    assert main(["pretrain", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    assert "path not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["finetune", "caption", "--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "init: required" in capsys.readouterr().err
    assert main(["pretrain", "--data", "x", "--output", str(tmp_path), "--batch-size", "1"]) == 2
    assert "batch_size" in capsys.readouterr().err
