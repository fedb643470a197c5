"""What the downstream-task tests share: a small toy world with its task files, a tokenizer
that knows the tasks' words, a tiny model, and a few plain training loops (no Ray) over the
tasks' real steps."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from capfilt.world.make import make_world
from capfilt.world.settings import WorldMakeSettings
from model.config import preset
from model.med import MED
from model.tokenizer import train_wordpiece
from pipelines.train.optim import make_optimizer, make_scheduler
from pipelines.train.tasks.step import TaskModel, make_batch, task_step

IMAGE_SIZE = 32  # the world draws 64 px; half keeps a CPU step short and objects visible


def make_task_world(out: Path) -> Path:
    # val_size > 0: the world deals NLVR2 pairs to splits in turn and alternates true/false
    # statements, so with two splits each would get one label only
    make_world(WorldMakeSettings(out=out, size=1, human_size=300, val_size=30, test_size=60, nlvr2_pairs=900,
                                 clips=100, workers=1))
    return out


def world_tokenizer(world: Path):
    texts = [c for r in pq.read_table(world / "human.parquet").to_pylist()
             for c in ([r["caption"]] if "caption" in r else r["captions"])]
    for r in pq.read_table(world / "tasks" / "vqa.parquet").to_pylist():
        texts += [r["question"], *r["answers"]]
    texts += [r["statement"] for r in pq.read_table(world / "tasks" / "nlvr2.parquet").to_pylist()]
    return train_wordpiece(texts, vocab_size=512)


def tiny_med(tokenizer, seed: int = 0) -> MED:
    config = preset("tiny", vocab_size=tokenizer.vocab_size, tokens=tokenizer.ids, vision_layers=2, text_layers=2,
                    image_size=IMAGE_SIZE)
    torch.manual_seed(seed)
    return MED(config)


def fine_tune(task: str, med: MED, tokenizer, rows: list[dict], steps: int, lr: float = 1e-3, batch: int = 16,
              seed: int = 0) -> TaskModel:
    """The task's own model and step (what the Ray Train loop runs), in a plain loop."""
    model = TaskModel(task, med)
    optimizer = make_optimizer(model, lr)
    scheduler = make_scheduler(optimizer, lr=lr, min_lr=1e-6, warmup_steps=10, total_steps=steps, decay="cosine")
    rng = random.Random(seed)
    for _ in range(steps):
        task_step(model, make_batch(task, rng.sample(rows, min(batch, len(rows))), tokenizer, med.config,
                                    med.config.max_text_len, rng), optimizer, scheduler)
    return model


def quick_filter(med: MED, tokenizer, pixels: torch.Tensor, captions: list[list[str]], steps: int,
                 lr: float = 1e-3, batch: int = 32, seed: int = 0) -> MED:
    """A retrieval model in a test's budget: in-batch ITC and ITM with a random negative (the
    real recipe, `finetune filter`, is tested elsewhere and needs far more steps from scratch)."""
    optimizer = make_optimizer(med, lr)
    scheduler = make_scheduler(optimizer, lr=lr, min_lr=1e-6, warmup_steps=10, total_steps=steps, decay="cosine")
    rng = random.Random(seed)
    med.train()
    for _ in range(steps):
        idx = rng.sample(range(len(captions)), batch)
        ids, mask = tokenizer.encode([rng.choice(captions[i]) for i in idx], med.config.max_text_len)
        embeds = med.encode_image(pixels[idx])
        logits = med.image_feature(embeds) @ med.text_feature(med.encode_text(ids, mask)).t() / 0.07
        labels = torch.arange(batch)
        itc = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        wrong = (labels + torch.randint(1, batch, (batch,))) % batch
        itm = F.cross_entropy(med.itm_logits(torch.cat([ids, ids[wrong]]), torch.cat([mask, mask[wrong]]),
                                             torch.cat([embeds, embeds])),
                              torch.cat([torch.ones(batch), torch.zeros(batch)]).long())
        optimizer.zero_grad()
        (itc + itm).backward()
        optimizer.step()
        scheduler.step()
    return med.eval()
