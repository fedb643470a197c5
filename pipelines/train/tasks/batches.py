"""Task examples (pipelines/train/tasks/data.py's rows) -> the tensors a task's step takes.

Plain functions, no Ray: the training workers and the evaluation call them alike. Images are read
and decoded here, where they are used. No augmentation: the toy world's questions and statements
name places and left/right, which a crop or a flip would make false.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from model.tasks.dialog import dialog_text
from model.tasks.vqa import answer_weights
from pipelines.train.augment import normalise
from pipelines.train.data import DataError
from pipelines.train.pairs import decode_image


def pixels(paths: Sequence[str], config) -> torch.Tensor:
    """(B, 3, S, S) normalised pixels of the images at `paths`."""
    arrays = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"data: image {path} cannot be read: {exc}") from None
        array = decode_image(data, config.image_size)
        if array is None:
            raise DataError(f"data: image {path} cannot be decoded")
        arrays.append(array)
    return normalise(torch.from_numpy(np.stack(arrays)), config)


def vqa_batch(rows: Sequence[dict[str, Any]], tokenizer, config, max_len: int) -> dict[str, torch.Tensor]:
    q_ids, q_mask = tokenizer.encode([r["question"] for r in rows], max_len)
    answers, owner, weights = [], [], []
    for i, r in enumerate(rows):
        for answer, weight in answer_weights(r["answers"]):
            answers.append(answer)
            owner.append(i)
            weights.append(weight)
    a_ids, a_mask = tokenizer.encode(answers, max_len)
    return {"pixel_values": pixels([r["image"] for r in rows], config), "q_ids": q_ids, "q_mask": q_mask,
            "a_ids": a_ids, "a_mask": a_mask, "owner": torch.tensor(owner),
            "weights": torch.tensor(weights, dtype=torch.float32)}


def nlvr_batch(rows: Sequence[dict[str, Any]], tokenizer, config, max_len: int) -> dict[str, torch.Tensor]:
    ids, mask = tokenizer.encode([r["statement"] for r in rows], max_len)
    return {"pixel_left": pixels([r["left_image"] for r in rows], config),
            "pixel_right": pixels([r["right_image"] for r in rows], config),
            "ids": ids, "mask": mask, "labels": torch.tensor([int(r["label"]) for r in rows])}


def dialog_batch(rows: Sequence[dict[str, Any]], tokenizer, config, max_len: int, negatives: int,
                 rng: random.Random | None) -> dict[str, torch.Tensor]:
    """Training: each round's true answer and `negatives` wrong candidates drawn by `rng`;
    rng None: every candidate (evaluation), in the row's order."""
    c_ids, c_mask = tokenizer.encode([r["caption"] for r in rows], max_len)
    texts, owner, labels = [], [], []
    for i, r in enumerate(rows):
        wrong = [j for j in range(len(r["candidates"])) if j != r["answer_index"]]
        picked = ([r["answer_index"], *rng.sample(wrong, min(negatives, len(wrong)))] if rng is not None
                  else range(len(r["candidates"])))
        for j in picked:
            texts.append(dialog_text(r["question"], r["candidates"][j], r["history"]))
            owner.append(i)
            labels.append(int(j == r["answer_index"]))
    ids, mask = tokenizer.encode(texts, max_len)
    return {"pixel_values": pixels([r["image"] for r in rows], config), "c_ids": c_ids, "c_mask": c_mask,
            "ids": ids, "mask": mask, "owner": torch.tensor(owner), "labels": torch.tensor(labels)}
