"""Settings of the toy world: what `world make`, `world serve` and `world urls` accept."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, DirectoryPath, Field, ValidationInfo, field_validator

FetchFailure = Literal["not_found", "truncated", "not_image", "slow"]
FETCH_FAILURES: tuple[str, ...] = ("not_found", "truncated", "not_image", "slow")
DEFAULT_PORT = 8600
DEFAULT_BASE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class WorldMakeSettings(BaseModel):
    """How big, how hard and how noisy a world to make."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path = Field(description="Directory to write the world into.")
    size: int = Field(5000, ge=1, le=5_000_000, description="Rows of the noisy web split.")
    human_size: int = Field(1000, ge=0, description="Images of the clean human-annotated split.")
    human_captions: int = Field(5, ge=1, le=20, description="Captions per human image.")
    val_size: int = Field(200, ge=0, description="Images of the val split (5 captions each).")
    test_size: int = Field(200, ge=0, description="Images of the test split (5 captions each).")
    seed: int = Field(0, ge=0, description="Same seed, same bytes.")
    # difficulty
    image_size: int = Field(64, ge=16, le=1024, description="Image side in pixels.")
    max_objects: int = Field(3, ge=1, le=3, description="Most objects in one scene.")
    single_object_share: float = Field(0.7, ge=0, le=1, description="Share of one-object scenes.")
    relations: bool = Field(True, description="Whether captions state relations (left of, above, ...).")
    # web noise
    web_noise: float = Field(0.4, ge=0, le=1, description="Share of web rows whose caption is wrong.")
    noise_other_image: float = Field(0.35, ge=0, description="Weight of 'caption of another image' noise.")
    noise_wrong_attribute: float = Field(0.35, ge=0, description="Weight of 'one attribute wrong' noise.")
    noise_junk: float = Field(0.2, ge=0, description="Weight of junk alt-text noise (file names, 'click to enlarge').")
    noise_empty: float = Field(0.1, ge=0, description="Weight of empty-caption noise.")
    broken_share: float = Field(0.05, ge=0, le=0.5, description="Share of web URLs the server breaks on purpose.")
    broken_kinds: list[FetchFailure] = Field(
        default_factory=lambda: list(FETCH_FAILURES), min_length=1,
        description="How broken URLs fail (shared evenly): not_found, truncated, not_image, slow.",
    )
    web_png_share: float = Field(0.2, ge=0, le=1, description="Share of web images saved as PNG (the rest JPEG).")
    jpeg_quality: int = Field(90, ge=1, le=100)
    base_url: str = Field(DEFAULT_BASE_URL, pattern=r"^https?://[^/\s]+(/[^\s]*)?$",
                          description="Where the world will be served; web URLs point there.")
    # downstream tasks
    vqa_per_image: int = Field(3, ge=0, le=20, description="VQA questions per human/val/test image.")
    nlvr2_pairs: int = Field(1000, ge=0, description="NLVR2-style image pairs.")
    dialog_rounds: int = Field(5, ge=1, le=10, description="Question-answer rounds per dialog.")
    dialog_candidates: int = Field(10, ge=2, le=100, description="Answer candidates per dialog round.")
    clips: int = Field(200, ge=0, description="Clips of moving objects.")
    clip_frames: int = Field(8, ge=2, le=64, description="Frames per clip.")
    # execution (no effect on the bytes written)
    workers: int = Field(0, ge=0, le=256, description="Processes that render images; 0: one per CPU core.")
    overwrite: bool = Field(False, description="Replace an existing world in OUT.")

    @field_validator("noise_empty")
    @classmethod
    def _noise_weights(cls, v: float, info: ValidationInfo) -> float:
        # the last weight checks them all, so the message names a key the user can set
        names = ("noise_other_image", "noise_wrong_attribute", "noise_junk")
        if info.data.get("web_noise", 0) > 0 and v + sum(info.data.get(n, 0) for n in names) <= 0:
            raise ValueError("the noise weights (noise_other_image, noise_wrong_attribute, noise_junk, "
                             "noise_empty) must not all be 0 when web_noise > 0")
        return v

    def noise_weights(self) -> dict[str, float]:
        return {
            "other_image": self.noise_other_image,
            "wrong_attribute": self.noise_wrong_attribute,
            "junk": self.noise_junk,
            "empty": self.noise_empty,
        }

    def recorded(self) -> dict:
        """What is saved beside the world: everything that shapes its bytes (not where it lies,
        nor how many processes made it)."""
        return self.model_dump(mode="json", exclude={"out", "workers", "overwrite"})


class WorldServeSettings(BaseModel):
    """Serve a made world's web images over HTTP, breaking the URLs its labels say."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: DirectoryPath = Field(description="A directory made by `capfilt world make`.")
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="0: any free port.")
    slow_seconds: float = Field(30.0, ge=0, le=3600,
                                description="How long 'slow' URLs wait before answering (beyond a typical timeout).")


class WorldUrlsSettings(BaseModel):
    """Write the web split's url list for a world served at another base URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: DirectoryPath = Field(description="A directory made by `capfilt world make`.")
    base_url: str = Field(pattern=r"^https?://[^/\s]+(/[^\s]*)?$", description="Where the world is served.")
    output: Path = Field(description="File to write: .parquet, .csv or .txt (one url a line).")
