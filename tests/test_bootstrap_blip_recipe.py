"""BLIP's recipe in the bootstrap stages, without Ray: top-k reaches the sampler, the model stages
prepare pixels from the original image (BLIP's test transform), the web text is cleaned by
pre_caption before ITM, and the original bytes are never written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bootstrap_world import make_checkpoint
from model.config import CLIP_MEAN, CLIP_STD
from pipelines.bootstrap.caption_stage import CaptionStage, generation_settings
from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.filter_stage import FilterStage
from pipelines.bootstrap.schema import OK, PENDING
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.stage_guard import mark_failed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("recipe-ckpt") / "ckpt")


def settings(checkpoint: Path, **changes) -> BootstrapSettings:
    values = dict(input="in.parquet", output=Path("out"), captioner=checkpoint, filter=checkpoint,
                  min_length=3, max_length=12, num_captions=1, image_size=32)
    values.update(changes)
    return BootstrapSettings(**values)


def original(seed: int, size=(150, 90)) -> bytes:
    """A non-square picture with structure (a gradient and a block), as PNG: lossless."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    pixels = np.stack([np.tile(x, (size[1], 1))] * 3, axis=-1) * rng.uniform(0.3, 1.0, 3)
    pixels[10:50, 20:70] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def downloaded(s: BootstrapSettings, keys: list[str], captions: list[str] | None = None) -> dict[str, np.ndarray]:
    """What the download stage hands the caption stage, from originals the input already holds."""
    n = len(keys)
    rows = {"key": keys, "url": [f"http://example.invalid/{k}.png" for k in keys],
            "web_caption": captions or ["a red square"] * n, "shard": [0] * n, "status": [PENDING] * n,
            "error": [None] * n, "image": [original(int(k)) for k in keys]}
    table = DownloadStage(s)({k: np.array(v, dtype=object) for k, v in rows.items()})
    return {name: np.array(table.column(name).to_pylist(), dtype=object) for name in table.column_names}


def blip_test_transform(data: bytes, size: int) -> np.ndarray:
    """BLIP's transform_test, restated: Resize((size, size), bicubic) of the original, to [0, 1],
    normalised with CLIP's mean and std."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)).transpose(2, 0, 1)


# ---- image preparation -------------------------------------------------------------------------
def test_download_stage_keeps_the_original_bytes_only_for_the_model_stages(checkpoint):
    batch = downloaded(settings(checkpoint), ["1", "2"])
    assert list(batch["_source_image"]) == [original(1), original(2)]
    assert batch["image"][0] != original(1)  # the stored image is the resized, bordered JPEG
    for s in (settings(checkpoint, model_image="download"), settings(checkpoint, download_only=True)):
        assert "_source_image" not in downloaded(s, ["1"])
    # a failed batch drops the bytes along with the image
    failed = mark_failed({**batch, "status": np.array([OK, OK], dtype=object)}, "caption failed")
    assert list(failed["_source_image"]) == [None, None]


def test_model_stages_see_blips_test_transform_of_the_original(checkpoint):
    s = settings(checkpoint)
    stage = CaptionStage(s)
    size = stage.config.image_size
    assert size == 64 and s.image_size == 32  # the download stage's copy is smaller than the model's
    batch = downloaded(s, ["1", "2"])
    got = stage.pixels(batch, [0, 1]).numpy()
    want = np.stack([blip_test_transform(original(k), size) for k in (1, 2)])
    assert np.abs(got - want).max() < 1e-5
    # the old path (the 32 px letterboxed JPEG upsampled) sees another picture
    old = CaptionStage(settings(checkpoint, model_image="download")).pixels(downloaded(settings(
        checkpoint, model_image="download"), ["1", "2"]), [0, 1]).numpy()
    assert np.abs(old - want).mean() > 0.05


# ---- the filter's text, and what is written ------------------------------------------------------
def test_filter_scores_the_cleaned_web_text_and_keeps_the_raw_one(checkpoint):
    raw, clean = "A Red Square!!! (Click: to ENLARGE)", "a red square click to enlarge"

    def run(caption: str, **changes):
        s = settings(checkpoint, num_captions=0, **changes)
        table = FilterStage(s)({**downloaded(s, ["1"], [caption]), "synthetic_captions": np.array([[]], dtype=object)})
        return table.to_pylist()[0], table.column_names

    cleaned, columns = run(raw)
    assert cleaned["web_caption"] == raw  # the output keeps the web's text
    assert "_source_image" not in columns  # never reaches the writer
    assert cleaned["web_itm"] == pytest.approx(run(clean, pre_caption=False)[0]["web_itm"], abs=1e-6)
    assert cleaned["web_itm"] != pytest.approx(run(raw, pre_caption=False)[0]["web_itm"], abs=1e-6)
    long = " ".join(["red"] * 40)
    assert run(long)[0]["web_itm"] == pytest.approx(run(" ".join(["red"] * 30), pre_caption=False)[0]["web_itm"], abs=1e-6)


# ---- sampling ------------------------------------------------------------------------------------
def test_top_k_reaches_the_sampler(checkpoint):
    assert generation_settings(settings(checkpoint)).top_k == 50  # BLIP's, by default
    assert generation_settings(settings(checkpoint, top_k=7)).top_k == 7

    def spread(**changes) -> int:  # distinct captions over seeds
        runs = [settings(checkpoint, top_p=1.0, seed=seed, **changes) for seed in range(4)]
        return len({CaptionStage(s)(downloaded(s, ["3"])).column("synthetic_captions").to_pylist()[0][0] for s in runs})

    assert spread(top_k=1) == 1  # one token left: every seed writes the same caption
    assert spread(top_k=0) > 1
