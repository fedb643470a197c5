"""Settings of `capfilt rounds`: the loop's own knobs, and one nested section per job it runs.

    web, human, eval, rounds, output, ...          the loop (top level)
    preset, num_workers, cpus_per_worker, use_gpu, seed
                                                    shared by every job of the loop (top level only)
    pretrain:  {max_steps, lr, batch_size, ...}     every knob of `capfilt pretrain`
    caption:   {max_steps, lr, prompt, ...}         every knob of `capfilt finetune caption`
    filter:    {max_steps, lr, ...}                 every knob of `capfilt finetune filter`
    bootstrap: {top_p, num_captions, threshold, ...} every knob of `capfilt bootstrap`
    evaluate:  {k_test, decoding, max_images, ...}  every knob of `capfilt evaluate`

In YAML the sections are sub-mappings (`pretrain: {max_steps: 200}`); on the command line each
knob is a prefixed flag (`--pretrain-max-steps 200`, `--bootstrap-top-p 0.9`). A section holds the
job's own settings type's fields minus those the loop fills in (data, output, init, checkpoints,
and the shared knobs above), with the same defaults, bounds and descriptions: they are copied
from pipelines/train/settings.py and pipelines/bootstrap/settings.py, so a knob added there appears
here. The jobs' cross-field checks (min_lr <= lr, min_length <= max_length, beams >= captions, ...)
run here too, by building each job's settings once before any work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from pipelines.bootstrap.settings import OPERATIONAL as BOOTSTRAP_OPERATIONAL
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.train.settings import EvaluateSettings, FinetuneSettings, JobSettings, TrainSettings

# Knobs every training job shares; set once, at the top level.
SHARED_TRAIN = ("preset", "num_workers", "cpus_per_worker", "use_gpu", "seed")
# Filled in by the loop, per round.
LOOP_OWNED = {
    "pretrain": {"data", "output", *SHARED_TRAIN},
    "caption": {"data", "output", "init", *SHARED_TRAIN},
    "filter": {"data", "output", "init", *SHARED_TRAIN},
    "bootstrap": {"input", "output", "captioner", "filter", "resume", "overwrite", "seed", "download_only"},
    "evaluate": {"checkpoint", "data", "output", "seed"},
}
SOURCES: dict[str, type[BaseModel]] = {
    "pretrain": JobSettings, "caption": FinetuneSettings, "filter": FinetuneSettings,
    "bootstrap": BootstrapSettings, "evaluate": EvaluateSettings,
}
STEPS = ("pretrain", "captioner", "filter", "bootstrap", "eval")
STOP_AFTER = re.compile(r"^(\d+):(fetch|pretrain|captioner|filter|bootstrap|eval)$")


def _section(name: str, source: type[BaseModel], owned: set[str]) -> type[BaseModel]:
    fields = {k: (f.annotation, f) for k, f in source.model_fields.items() if k not in owned}
    model = create_model(f"{name.capitalize()}Knobs", __config__=ConfigDict(frozen=True, extra="forbid"),
                         **fields)  # type: ignore[call-overload]
    model.__doc__ = f"The knobs of the {name} job that the loop does not fill in ({source.__name__})."
    return model


PretrainKnobs = _section("pretrain", JobSettings, LOOP_OWNED["pretrain"])
CaptionKnobs = _section("caption", FinetuneSettings, LOOP_OWNED["caption"])
FilterKnobs = _section("filter", FinetuneSettings, LOOP_OWNED["filter"])
BootstrapKnobs = _section("bootstrap", BootstrapSettings, LOOP_OWNED["bootstrap"])
EvaluateKnobs = _section("evaluate", EvaluateSettings, LOOP_OWNED["evaluate"])
SECTIONS: dict[str, type[BaseModel]] = {
    "pretrain": PretrainKnobs, "caption": CaptionKnobs, "filter": FilterKnobs,
    "bootstrap": BootstrapKnobs, "evaluate": EvaluateKnobs,
}

# Settings that change how the loop runs but not what it makes: a resumed run may change them.
OPERATIONAL = {"output", "resume", "stop_after", "labels"}
# What a resumed run may change besides: more rounds (the loop goes on from its last one), and the
# bootstrap section's knobs that `capfilt bootstrap --resume` itself lets change.
MAY_CHANGE_ON_RESUME = {"rounds", *(f"bootstrap.{k}" for k in BOOTSTRAP_OPERATIONAL if k not in LOOP_OWNED["bootstrap"])}


class RoundsSettings(BaseModel):
    """R rounds of CapFilt: round r pre-trains on human + web_r, fine-tunes the captioner and the
    filter on human, bootstraps the web into web_{r+1} and evaluates; round R pre-trains on the
    last bootstrapped web and is evaluated (the model the loop was for)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    web: str = Field(description="Web corpus for `bootstrap`: Parquet/CSV/TSV/JSONL of url + caption, or an "
                                 "img2dataset output folder.")
    human: list[str] = Field(min_length=1, description="Human-annotated pairs (training data paths): pre-training "
                                                       "and the captioner's and filter's fine-tunes.")
    eval: list[str] = Field(min_length=1, description="Evaluation split (Parquet): zero-shot retrieval of each "
                                                      "round's pre-trained model, captioning of its captioner.")
    rounds: int = Field(1, ge=1, le=100, description="Bootstrapping rounds R (R + 1 pre-trainings).")
    output: Path = Field(description="Output folder: round_<r>/..., rounds.json, report.html.")
    labels: Path | None = Field(None, description="Labels of the web rows for the report (a toy world folder or "
                                                  "a key + noise/clean table).")
    resume: bool = Field(False, description="Finish a stopped run in the same output folder (same inputs and "
                                            "settings); done steps are skipped.")
    stop_after: str | None = Field(None, description="Stop after this step, e.g. '0:bootstrap' "
                                                     "(steps: fetch, pretrain, captioner, filter, bootstrap, eval).")
    # shared by every training job
    preset: str = Field("tiny", description="Model size of each pre-training from scratch (tiny, base, large).")
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers of every training job.")
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="CPUs per Ray Train worker.")
    use_gpu: bool = Field(False, description="One GPU per Ray Train worker (set bootstrap.num_gpus_per_actor "
                                             "for the caption and filter actors).")
    seed: int = Field(0, ge=0, description="Seed of every job (training, captions, evaluation).")
    # one section per job
    pretrain: PretrainKnobs = Field(default_factory=PretrainKnobs, description="`capfilt pretrain` knobs.")  # type: ignore[valid-type]
    caption: CaptionKnobs = Field(default_factory=CaptionKnobs, description="`capfilt finetune caption` knobs.")  # type: ignore[valid-type]
    filter: FilterKnobs = Field(default_factory=FilterKnobs, description="`capfilt finetune filter` knobs.")  # type: ignore[valid-type]
    bootstrap: BootstrapKnobs = Field(default_factory=BootstrapKnobs, description="`capfilt bootstrap` knobs.")  # type: ignore[valid-type]
    evaluate: EvaluateKnobs = Field(default_factory=EvaluateKnobs, description="`capfilt evaluate` knobs.")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _coherent(self) -> "RoundsSettings":
        if self.stop_after is not None:
            m = STOP_AFTER.match(self.stop_after)
            if m is None:
                raise ValueError(f"stop_after: {self.stop_after!r} is not ROUND:STEP with STEP one of fetch, "
                                 f"pretrain, captioner, filter, bootstrap, eval")
            if int(m.group(1)) > self.rounds:
                raise ValueError(f"stop_after: round {m.group(1)} is past the last round ({self.rounds})")
        # the jobs' own cross-field checks, on placeholders for what the loop fills in
        here = Path.cwd()
        for name, build in (("pretrain", lambda: self.train_settings("pretrain", [], here)),
                            ("caption", lambda: self.train_settings("caption", [], here, init=here)),
                            ("filter", lambda: self.train_settings("filter", [], here, init=here)),
                            ("bootstrap", lambda: self.bootstrap_settings(here, here, here)),
                            ("evaluate", lambda: self.evaluate_settings(here, None))):
            try:
                build()
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"{name}{'.' + where if where else ''}: {msg}") from None
        return self

    # -- the jobs' settings, built from the sections and what the loop fills in ---------------
    def train_settings(self, task: str, data: list[str], output: Path, init: Path | None = None) -> TrainSettings:
        section = {"pretrain": self.pretrain, "caption": self.caption, "filter": self.filter}[task]
        values: dict[str, Any] = {**section.model_dump(), "data": data or ["-"], "output": output,
                                  **{k: getattr(self, k) for k in SHARED_TRAIN}, "task": task}
        if init is not None:
            values["init"] = init
        return TrainSettings.model_validate(values)

    def bootstrap_settings(self, output: Path, captioner: Path | None, filter: Path | None, *, resume: bool = False,
                           **changes: Any) -> BootstrapSettings:
        return BootstrapSettings.model_validate({**self.bootstrap.model_dump(), "input": self.web, "output": output,
                                                 "captioner": captioner, "filter": filter, "resume": resume,
                                                 "seed": self.seed, **changes})

    def evaluate_settings(self, checkpoint: Path, output: Path | None, **changes: Any) -> EvaluateSettings:
        return EvaluateSettings.model_validate({**self.evaluate.model_dump(), "checkpoint": checkpoint,
                                                "data": self.eval, "output": output, "seed": self.seed, **changes})

    def result_settings(self) -> dict[str, Any]:
        """What decides the loop's output: compared on --resume."""
        return self.model_dump(mode="json", exclude=OPERATIONAL)

    @property
    def stop_point(self) -> tuple[int, str] | None:
        if self.stop_after is None:
            return None
        r, step = self.stop_after.split(":")
        return int(r), step
