"""Settings of the training jobs (pre-train, fine-tune captioner, fine-tune filter) and of evaluation.

One frozen pydantic model per command; `capfilt/` turns them into flags, the loop receives them
validated. Defaults follow BLIP's pre-training recipe (AdamW, weight decay 0.05, linear warm-up then
decay) scaled down to what a CPU and the toy world can run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.generation_settings import EVALUATION, GenerationSettings, generation_field
from model.hub import looks_resolvable

Task = Literal["pretrain", "caption", "filter"]

# The losses each task trains; the names are those model/pretrain_task.py returns.
TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "pretrain": ("itc", "itm", "lm"),
    "caption": ("lm",),
    "filter": ("itc", "itm"),
}


class JobSettings(BaseModel):
    """The flags every training command takes (`capfilt pretrain`, `capfilt finetune ...`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: list[str] = Field(min_length=1, description="Bootstrap output, toy-world split, img2dataset "
                                                      "output, Parquet or WebDataset files or folders.")
    output: Path = Field(description="Output folder; a job started again on it resumes.")
    preset: str = Field("tiny", description="Model size when starting from scratch (tiny, base, large).")
    init: Path | None = Field(None, description="Checkpoint to start from (required to fine-tune): a folder, a BLIP "
                                                ".pth, a released preset (capfilt model list) or a hub name org/name[@revision].")
    epochs: int = Field(1, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps in all.")
    batch_size: int = Field(16, ge=2, le=65_536, description="Pairs per worker per step (ITM needs >= 2).")
    lr: float = Field(3e-4, gt=0, le=1.0, description="Peak learning rate.")
    min_lr: float = Field(1e-6, ge=0, le=1.0, description="Learning rate at the start of warm-up and the floor of decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps from min_lr to lr.")
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    weight_decay: float = Field(0.05, ge=0, le=1.0, description="AdamW weight decay (not on biases, norms, temperature).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this.")
    image_size: int | None = Field(None, ge=16, le=1024, description="Training image side; default the model's.")
    crop_scale_min: float = Field(0.8, gt=0, le=1.0, description="Smallest area share of the random resized crop "
                                  "(1.0: no crop). Captions name places and sizes: keep it mild.")
    max_text_len: int | None = Field(None, ge=4, le=512, description="Token limit of captions; default the model's.")
    prompt: str = generation_field("prompt", description="Captioner prompt (caption task), masked out of the LM loss.")
    queue_size: int | None = Field(None, ge=0, description="ITC feature queue length; default the task's.")
    label_smoothing: float = Field(0.1, ge=0, lt=1.0, description="LM label smoothing (BLIP: 0.1). It leaves "
                                   "1 - eps on the right token, so nucleus sampling at top-p >= 1 - eps dips "
                                   "into a uniform tail of stray tokens: lower one or the other.")
    pre_caption: bool = Field(True, description="Clean every training caption as BLIP's pre_caption: lowercase, "
                                                ". ! \" ( ) * # : ; ~ to spaces, at most caption_max_words words.")
    caption_max_words: int = Field(30, ge=1, le=10_000, description="Words pre_caption keeps (BLIP: 30).")
    positives: Literal["auto", "pair", "image"] = Field(
        "auto", description="ITC/ITM positives: the pair itself (BLIP's pre-training) or every caption of the "
                            "same image (BLIP's retrieval fine-tune). auto: pair for pretrain, image for filter.")
    text_dropout: float | None = Field(None, ge=0, lt=1.0, description="Dropout on the text transformer's hidden "
                                       "states and attention probabilities; default the checkpoint's (BLIP's 0.1 for "
                                       "base, large and imported BLIP weights; 0 for tiny).")
    vision_drop_path: float | None = Field(None, ge=0, lt=1.0, description="ViT drop-path rate at the last block; "
                                           "default the checkpoint's (BLIP: 0.1 for ViT-L, else 0).")
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (DDP ranks).")
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL and bf16 autocast.")
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1, description="Write a metrics line every this many steps.")
    checkpoint_every: int = Field(200, ge=1, description="Checkpoint every this many steps (and at each epoch's end).")
    keep_checkpoints: int = Field(2, ge=1, description="Ray Train checkpoints to keep.")
    max_failures: int = Field(3, ge=-1, description="Worker failures to recover from (-1: always).")
    shuffle_buffer: int = Field(1000, ge=0, description="Rows in each worker's local shuffle buffer (0: off).")

    @field_validator("output", "init")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # Ray Train's workers do not run in the driver's working directory, and they read
        # these settings again: a path the user gave relative to theirs must travel absolute.
        # A hub name or preset (no such local path) stays as it is.
        return None if path is None else (path.absolute() if path.exists() else path)

    @model_validator(mode="after")
    def _coherent(self) -> "JobSettings":
        if self.init is not None and not looks_resolvable(self.init):
            raise ValueError(f"init: checkpoint folder not found, nor a .pth file, released preset or hub name: {self.init}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        return self


class FinetuneSettings(JobSettings):
    """Fine-tunes start from a checkpoint, with a smaller learning rate (BLIP: 1e-5 for base;
    the tiny model of the toy world takes more) and a short warm-up."""

    init: Path = Field(description="Checkpoint to start from (a pre-trained model): folder, .pth, preset or hub name.")
    lr: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps from min_lr to lr.")


class TrainSettings(JobSettings):
    """Everything a training job needs, its task included; saved as settings.json in its output."""

    task: Task = Field("pretrain", description="pretrain (ITC+ITM+LM), caption (LM) or filter (ITC+ITM).")

    @model_validator(mode="after")
    def _fine_tune_needs_init(self) -> "TrainSettings":
        if self.task != "pretrain" and self.init is None:
            raise ValueError(f"init: a {self.task} fine-tune starts from a checkpoint (--init)")
        return self

    @classmethod
    def for_task(cls, task: Task, job: JobSettings) -> "TrainSettings":
        return cls.model_validate({**job.model_dump(), "task": task})

    @property
    def losses(self) -> tuple[str, ...]:
        return TASK_LOSSES[self.task]


EvalTask = Literal["retrieval", "caption", "vqa", "nlvr2", "dialog", "video_retrieval", "video_qa"]
# The downstream tasks read task data (one file holds every split; --split picks one), each its own.
DOWNSTREAM_TASKS = ("vqa", "nlvr2", "dialog", "video_retrieval", "video_qa")


class EvaluateSettings(BaseModel):
    """Evaluation of one checkpoint on one split: image-text retrieval and captioning (split
    files), or one downstream task (task files, pipelines/train/tasks/)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: Path = Field(description="Checkpoint folder to evaluate.")
    data: list[str] = Field(min_length=1, description="The split: toy-world split Parquet, bootstrap output, ...")
    output: Path | None = Field(None, description="JSON file to write the metrics to (else printed only).")
    tasks: list[EvalTask] = Field(default_factory=lambda: ["retrieval", "caption"], description=
                                  "retrieval, caption (on split files); or one of vqa, nlvr2, dialog, "
                                  "video_retrieval, video_qa (on task files; video_qa takes clips_qa and clips).")
    split: str = Field("test", min_length=1, description="Downstream tasks: the split of the task file to evaluate.")
    inference: Literal["rank", "generate"] = Field("rank", description="VQA and video QA: rank the answer list "
                                                   "(BLIP's default) or generate the answer (beam 3, max 10).")
    k_answers: int = Field(128, ge=1, le=100_000, description="VQA rank inference: candidates re-scored (BLIP: 128).")
    frames: int = Field(8, ge=1, le=256, description="Video tasks: frames sampled uniformly per clip.")
    k_test: int = Field(16, ge=1, le=1024, description="ITM re-ranks the ITC top k.")
    batch_size: int = Field(32, ge=1, le=4096)
    max_images: int | None = Field(None, ge=1, description="Evaluate on the first this many images only.")
    # generation knobs: bounds and descriptions from model/generation_settings.py, defaults its
    # EVALUATION (BLIP's captioning evaluation); greedy is beam search with one beam
    decoding: Literal["beam", "nucleus", "greedy"] = Field(EVALUATION.decoding, description="Caption decoding.")
    num_beams: int = generation_field("num_beams", default=EVALUATION.num_beams)
    top_k: int = generation_field("top_k", default=EVALUATION.top_k)
    top_p: float = generation_field("top_p", default=EVALUATION.top_p)
    max_length: int = generation_field("max_length", default=EVALUATION.max_length)
    min_length: int = generation_field("min_length", default=EVALUATION.min_length)
    prompt: str = generation_field("prompt", default=EVALUATION.prompt)
    pre_caption: bool = Field(True, description="Clean the retrieval texts as BLIP's pre_caption (its retrieval "
                                                "evaluation does); caption references are left as written.")
    caption_max_words: int = Field(30, ge=1, le=10_000, description="Words pre_caption keeps (BLIP: 30).")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _coherent(self) -> "EvaluateSettings":
        if not self.checkpoint.is_dir():
            raise ValueError(f"checkpoint: folder not found: {self.checkpoint}")
        self.generation  # min <= max length: checked where generation is defined
        downstream = [t for t in self.tasks if t in DOWNSTREAM_TASKS]
        if downstream and len(self.tasks) > 1:
            raise ValueError(f"tasks: {downstream[0]} reads its own task data; evaluate it alone (got {self.tasks})")
        return self

    @property
    def generation(self) -> GenerationSettings:
        """What the captioning evaluation generates with (one caption per image)."""
        return GenerationSettings.check(
            decoding="nucleus" if self.decoding == "nucleus" else "beam",
            num_beams=1 if self.decoding == "greedy" else self.num_beams, top_k=self.top_k, top_p=self.top_p,
            max_length=self.max_length, min_length=self.min_length, prompt=self.prompt)
