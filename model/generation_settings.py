"""How captions are written: the settings of caption generation (model/generation.py), kept apart
from the torch code so that a job's settings (the bootstrap's, the evaluation's) can take their
fields from here without importing torch into the driver.

The one home of every generation knob's bound, default and description: the bootstrap's and the
evaluation's flat settings take their fields from here (generation_field), so a bound is written
once and a bad value is refused at the command line, not deep inside a job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo


class GenerationSettings(BaseModel):
    """How captions are written; BLIP's sampling defaults (max 30, min 10, top-k 50 then top-p 0.9,
    repetition penalty 1.1).

    BLIP pinned transformers 4.15, whose `generate(do_sample=True)` applied its default top_k=50
    although BLIP passes only top_p: the nucleus is taken from the 50 most likely tokens,
    renormalised. Without it, top-p 0.9 reaches into the flat tail that label smoothing leaves
    (0.1 spread over the vocabulary) and picks stray tokens.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_captions: int = Field(1, ge=1, le=64, description="Synthetic captions per image (K).")
    decoding: Literal["nucleus", "beam"] = Field("nucleus", description="Nucleus sampling or beam search.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, le=1_000_000, description="Sample from the k most likely tokens, renormalised, "
                                                          "before top-p; BLIP's (transformers' default). 0 = off.")
    temperature: float = Field(1.0, gt=0.0, le=10, description="Sampling temperature.")
    min_length: int = Field(10, ge=0, le=512, description="Tokens before a caption may end ([SEP] is not "
                                                         "chosen before), [DEC] and prompt included.")
    max_length: int = Field(30, ge=2, le=512, description="Tokens at most, [DEC], prompt and [SEP] included.")
    repetition_penalty: float | None = Field(
        None, ge=1.0, le=10, description="Penalty on repeated tokens; default BLIP's: 1.1 nucleus, 1.0 beam."
    )
    num_beams: int = Field(3, ge=1, le=64, description="Beams for beam search.")
    length_penalty: float = Field(1.0, description="beam scores are divided by length**length_penalty")
    prompt: str = Field("a picture of ", description="Text the captioner continues (stripped from the output).")

    @model_validator(mode="after")
    def _consistent(self) -> "GenerationSettings":
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) exceeds max_length ({self.max_length})")
        if self.decoding == "beam" and self.num_beams < self.num_captions:
            raise ValueError(f"beam search returns at most num_beams ({self.num_beams}) captions, asked for {self.num_captions}")
        return self

    @classmethod
    def check(cls, **values) -> "GenerationSettings":
        """Build from a command's flat settings; a ValueError naming what is wrong, for that
        command's own validator (so min <= max and beams >= captions are checked once, here)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None

    @property
    def penalty(self) -> float:
        if self.repetition_penalty is not None:
            return self.repetition_penalty
        return 1.1 if self.decoding == "nucleus" else 1.0  # BLIP hard-codes 1.1 for sampling


# BLIP's captioning evaluation (its caption_coco config: beam search, 3 beams, 20 tokens at most,
# 5 at least): the defaults of `capfilt evaluate`, kept here beside the sampling ones.
EVALUATION = GenerationSettings(decoding="beam", num_beams=3, max_length=20, min_length=5)


def generation_field(name: str, **default: Any) -> Any:
    """GenerationSettings' field `name` (bounds, default, description) for a command's flat
    settings model; `default=` replaces the default only (e.g. EVALUATION's)."""
    return FieldInfo.merge_field_infos(GenerationSettings.model_fields[name], **default)
