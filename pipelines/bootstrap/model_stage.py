"""What the caption and filter stages share: loading a checkpoint, decoding images, timing.

Both are Ray Data actor stages; heavy state (the checkpoint) is built once in `__init__`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
import numpy as np
import torch
from PIL import Image

from model.checkpoint import load_checkpoint
from model.precision import Precision, cast_for_inference, inference_dtype
from model.preprocess import images_to_tensor
from pipelines.bootstrap.schema import OK


def stage_device(num_gpus_per_actor: float) -> str:
    """CUDA when the actor was given a GPU and one is visible, else CPU."""
    return "cuda" if num_gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"


def key_seed(seed: int, key: str) -> int:
    """A stable per-row seed: the same (seed, key) gives the same captions on any worker, in any
    batch, after any resume (Python's hash() is salted per process, so sha256)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


class CheckpointStage:
    """Loads one checkpoint onto the actor's device, in the precision asked for (bf16 where
    "auto" finds it fast), and turns a batch's JPEGs into pixels."""

    def __init__(self, checkpoint_dir: Path, num_gpus_per_actor: float, precision: Precision = "fp32"):
        self.device = stage_device(num_gpus_per_actor)
        # the driver hashed the checkpoint for the manifest; here it would be ~0.7 s per BLIP-base
        # fp32 model of every actor's start-up, for a hash nothing reads. The tensors read become
        # the model's weights (adopt): no second copy of them in the actor.
        ckpt = load_checkpoint(checkpoint_dir, device=self.device, hashed=False, adopt=True)
        self.dtype = inference_dtype(precision, self.device)
        self.med = cast_for_inference(ckpt.med, self.dtype)
        self.tokenizer = ckpt.tokenizer
        self.config = ckpt.config

    @staticmethod
    def ok_rows(batch: dict[str, np.ndarray]) -> list[int]:
        return [i for i, status in enumerate(batch["status"]) if status == OK]

    def pixels(self, batch: dict[str, np.ndarray], rows: list[int]) -> torch.Tensor:
        """The rows' images at the model's size: from the original bytes when the download stage
        kept them (BLIP's test transform: one bicubic resize, no border), else from its resized JPEG."""
        sources = batch.get("_source_image")
        images = []
        for i in rows:
            data = sources[i] if sources is not None and sources[i] is not None else batch["image"][i]
            with Image.open(io.BytesIO(data)) as img:
                images.append(img.convert("RGB"))
        return images_to_tensor(images, self.config).to(self.device)  # (B, 3, S, S)


def busy_seconds(n: int, rows: list[int], seconds: float) -> np.ndarray:
    """A batch's busy time spread over the rows the stage worked on (0 for the rest), so that
    the writer's sums give each stage's images per busy second."""
    out = np.zeros(n)
    if rows:
        out[rows] = seconds / len(rows)
    return out
