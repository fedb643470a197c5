"""Settings of the downstream fine-tunes (`capfilt finetune vqa|nlvr2|dialog`).

BLIP's recipes (base): VQA lr 2e-5 for 10 epochs, NLVR2 3e-5 for 15, AdamW with weight decay
0.05, cosine decay; the defaults here are the tiny model's on the toy world, which learns from
scratch-sized rates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FinetuneTask = Literal["vqa", "nlvr2", "dialog"]


class TaskJobSettings(BaseModel):
    """The flags of `capfilt finetune vqa|nlvr2|dialog` (the task is the command)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: list[str] = Field(min_length=1, description="The task's Parquet file(s), e.g. WORLD/tasks/vqa.parquet "
                                                      "(README: downstream task data).")
    split: str = Field("train", min_length=1, description="The rows of this split are trained on.")
    output: Path = Field(description="Output folder; a job started again on it resumes.")
    init: Path = Field(description="Checkpoint folder to start from: a pre-trained model (roles captioner/filter) "
                                   "or a checkpoint of the same task.")
    epochs: int = Field(1, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps in all.")
    max_examples: int | None = Field(None, ge=1, description="Train on the first this many examples only.")
    batch_size: int = Field(16, ge=1, le=65_536, description="Examples per worker per step.")
    lr: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate (BLIP base: VQA 2e-5, NLVR2 3e-5).")
    min_lr: float = Field(1e-6, ge=0, le=1.0)
    warmup_steps: int = Field(20, ge=0)
    decay: Literal["cosine", "linear", "constant"] = Field("cosine")
    weight_decay: float = Field(0.05, ge=0, le=1.0)
    grad_clip: float | None = Field(None, gt=0)
    image_size: int | None = Field(None, ge=16, le=1024, description="Image side; default the model's "
                                   "(BLIP fine-tunes VQA at 480, NLVR2 at 384).")
    max_text_len: int | None = Field(None, ge=4, le=512, description="Token limit of texts; default the model's.")
    label_smoothing: float = Field(0.1, ge=0, lt=1.0, description="VQA's answer LM loss smoothing (BLIP: 0.1).")
    num_workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    use_gpu: bool = Field(False)
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(3, ge=-1)

    @field_validator("output", "init")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.absolute()  # Ray Train's workers do not run in the driver's directory

    @model_validator(mode="after")
    def _coherent(self) -> "TaskJobSettings":
        if not self.init.is_dir():
            raise ValueError(f"init: checkpoint folder not found: {self.init}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        return self


class TaskFinetuneSettings(TaskJobSettings):
    """A task fine-tune's settings, its task included; saved as settings.json in its output."""

    task: FinetuneTask = Field("vqa", description="vqa, nlvr2 or dialog.")

    @classmethod
    def for_task(cls, task: FinetuneTask, job: TaskJobSettings) -> "TaskFinetuneSettings":
        return cls.model_validate({**job.model_dump(), "task": task})
