"""Every knob of the bootstrap job, validated once at the entry point and saved in the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.generation_settings import GenerationSettings, generation_field

# img2dataset's default opt-out directives (downloader.py): a response whose X-Robots-Tag carries
# one of these is not used.
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")

InputFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "img2dataset"]
ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]


# Settings that change how the work runs but not what it produces: a resumed run may change them
# (pipelines/run_folder.py), in `capfilt bootstrap` and in the rounds loop's bootstrap section.
OPERATIONAL = {"output", "resume", "overwrite", "captioner_actors", "filter_actors", "num_gpus_per_actor",
               "cpus_per_actor", "model_stages", "batch_size", "download_threads", "download_batch_size", "download_cpus",
               "storage_options", "stage_retries", "progress_seconds"}


class BootstrapSettings(BaseModel):
    """CapFilt over a web corpus: download, caption, filter, write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- where from, where to ------------------------------------------------------------
    input: str = Field(description="Parquet/CSV/TSV/JSONL file, folder or glob (local or fsspec URL), "
                                   "or an img2dataset output folder.")
    output: str = Field(description="Output folder, local or any fsspec URL (s3://bucket/x, gs://...): "
                                    "parquet/, webdataset/, stats/, manifest.json.")
    captioner: Path | None = Field(None, description="Captioner checkpoint: capfilt or transformers BLIP folder, "
                                                     "BLIP .pth, released preset (capfilt model list, e.g. blip-large) "
                                                     "or hub name org/name[@revision] (not with --download-only).")
    filter: Path | None = Field(None, description="Filter checkpoint: capfilt or transformers BLIP ITM folder, "
                                                  "BLIP .pth, released preset (e.g. blip-itm-large) or hub name "
                                                  "org/name[@revision] (not with --download-only).")
    download_only: bool = Field(False, description="Download, validate, resize and write; no model. The output "
                                                   "is img2dataset-like (one sample per image, the web caption "
                                                   "as .txt) and is itself a valid --input.")
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec options per protocol, as JSON: "
                                          "'{\"s3\": {\"endpoint_url\": \"http://...\"}}'. Never saved in the "
                                          "manifest. The environment (AWS_*, FSSPEC_S3_*) works too.")
    input_format: InputFormat = Field("auto", description="Input format; auto guesses from names.")
    url_col: str = Field("url", min_length=1, description="Column holding the image URL.")
    caption_col: str = Field("caption", min_length=1, description="Column holding the web caption.")
    key_col: str | None = Field(None, description="Column holding a unique key; else a key is derived "
                                                  "from the row's position in the input.")
    resume: bool = Field(False, description="Finish a stopped run in the same output folder.")
    overwrite: bool = Field(False, description="Delete what the output folder holds and start again.")
    save_additional_columns: list[str] = Field(
        default_factory=list, description="Input columns carried into the output Parquet and the samples' "
                                          ".json, as img2dataset's option of that name.")
    parquet_images: bool = Field(False, description="Also store the image bytes in the Parquet files (by "
                                                    "default images are stored once, in the tars).")
    stage_retries: int = Field(1, ge=0, le=10, description="Tries again a batch whose stage raised; then its "
                                                           "rows get status stage_error and the job goes on.")
    progress_seconds: float = Field(10.0, gt=0, le=3600, description="Seconds between progress lines.")
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="Input rows per work shard and per "
                                                                 "output shard (the unit of resume).")

    # -- download (img2dataset's fetch and resize) ---------------------------------------
    timeout: float = Field(10.0, gt=0, le=600, description="Seconds per HTTP request, for the whole "
                                                           "answer (redirects, headers and body).")
    retries: int = Field(0, ge=0, le=10, description="Extra tries after a failed download.")
    resize_mode: ResizeMode = Field("border", description="img2dataset resize mode.")
    image_size: int = Field(256, ge=8, le=4096, description="img2dataset resize target (pixels).")
    resize_only_if_bigger: bool = Field(False, description="Only shrink, never enlarge.")
    user_agent_token: str | None = Field(None, description="Token added to the User-Agent and matched "
                                                           "against X-Robots-Tag directives.")
    disallowed_header_directives: list[str] = Field(
        list(DEFAULT_DISALLOWED_DIRECTIVES),
        description="X-Robots-Tag directives that opt an image out; an empty list honours none.")
    max_image_bytes: int = Field(20_000_000, ge=1, description="Larger responses are refused (too_large).")
    allow_private_hosts: bool = Field(False, description="Allow hosts on loopback or private addresses "
                                                         "(tests, intranets); link-local and cloud "
                                                         "metadata addresses stay refused.")
    download_threads: int = Field(16, ge=1, le=512, description="Concurrent fetches inside one "
                                                                "download task.")
    download_batch_size: int = Field(64, ge=1, le=100_000, description="Rows per download task.")
    download_cpus: float = Field(0.5, gt=0, le=64, description="CPUs reserved per download task.")

    model_image: Literal["original", "download"] = Field(
        "original", description="What the caption and filter stages prepare their pixels from: the original "
                                "image, resized to the model's size (bicubic, no border: BLIP's test transform), "
                                "or the download stage's resized image (--resize-mode, --image-size), upsampled. "
                                "When the input holds the images (img2dataset shards, a rounds' web folder), "
                                "the original is the input's image.")

    # -- caption ---------------------------------------------------------------------------
    captioner_actors: int = Field(1, ge=1, le=1024, description="Captioner actor pool size.")
    filter_actors: int = Field(1, ge=1, le=1024, description="Filter actor pool size.")
    model_stages: Literal["split", "fused"] = Field(
        "split", description="split: a captioner pool, then a filter pool; fused: captioner_actors + "
                             "filter_actors actors, each captioning then filtering its batches with both "
                             "models (balanced by construction: on 2 CPU cores, 1.1x the split layout's "
                             "images/s, benchmarks/bootstrap_vs_transformers.py).")
    num_gpus_per_actor: float = Field(0.0, ge=0, le=8, description="GPUs per caption/filter actor.")
    cpus_per_actor: float = Field(1.0, gt=0, le=64, description="CPUs per caption/filter actor.")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per caption/filter batch.")
    # generation knobs: bounds, defaults and descriptions from model/generation_settings.py; only
    # num_captions differs, as 0 (no synthetic caption, the web caption filtered alone) is allowed here
    num_captions: int = Field(1, ge=0, le=64, description="Synthetic captions per image (K); 0 = none.")
    decoding: Literal["nucleus", "beam"] = generation_field("decoding")
    top_k: int = generation_field("top_k")
    top_p: float = generation_field("top_p")
    temperature: float = generation_field("temperature")
    min_length: int = generation_field("min_length")
    max_length: int = generation_field("max_length")
    repetition_penalty: float | None = generation_field("repetition_penalty")
    num_beams: int = generation_field("num_beams")
    prompt: str = generation_field("prompt")
    seed: int = Field(0, ge=0, description="A caption depends only on (seed, row key).")

    # -- filter ----------------------------------------------------------------------------
    threshold: float = Field(0.5, ge=0, le=1, description="A caption is kept when its ITM "
                                                          "probability is >= this (BLIP's 0.5, after the "
                                                          "softmax; `capfilt calibrate` derives one from a "
                                                          "labelled sample).")
    pre_caption: bool = Field(True, description="Clean the web caption as BLIP's pre_caption before ITM: "
                                                "lowercase, . ! \" ( ) * # : ; ~ to spaces, at most "
                                                "caption_max_words words (the output keeps the raw text).")
    caption_max_words: int = Field(30, ge=1, le=10_000, description="Words pre_caption keeps (BLIP: 30).")
    filter_web: bool = Field(True, description="Filter web captions too (else keep them all).",
                             json_schema_extra={"flag": "--filter-web/--keep-all-web"})
    keep: Literal["best", "all"] = Field("all", description="Keep every synthetic caption that passes, "
                                                             "or only the best one.")

    # -- model arithmetic -------------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Caption and filter arithmetic: bf16 weights and activations, or fp32. auto = bf16 "
                            "where the device has fast bf16 (CUDA, or a CPU with AVX512-BF16/AMX), else fp32 "
                            "(parity: benchmarks/precision_parity.py).")

    @field_validator("output", mode="before")
    @classmethod
    def _output_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"storage_options is not JSON: {exc}") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> "BootstrapSettings":
        if not self.download_only and (self.captioner is None or self.filter is None):
            raise ValueError("captioner and filter checkpoints are required (or pass --download-only)")
        if not self.output.strip():
            raise ValueError("output is empty")
        self.generation  # min <= max length, beams >= captions: checked where generation is defined
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        return self

    @property
    def generation(self) -> GenerationSettings:
        """What the caption stage generates with."""
        return GenerationSettings.check(
            num_captions=max(self.num_captions, 1), decoding=self.decoding, top_k=self.top_k, top_p=self.top_p,
            temperature=self.temperature, min_length=self.min_length, max_length=self.max_length,
            repetition_penalty=self.repetition_penalty, num_beams=self.num_beams, prompt=self.prompt)

    @property
    def disallowed_directives(self) -> frozenset[str]:
        return frozenset(d.strip().lower() for d in self.disallowed_header_directives if d.strip())
