"""The caption and filter stages without Ray: every caption and filter knob changes what the stage
does, on a tiny random checkpoint (the graph tests cover the knobs that need a whole run)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bootstrap_world import make_checkpoint
from pipelines.bootstrap.caption_stage import CaptionStage
from pipelines.bootstrap.filter_stage import FilterStage
from pipelines.bootstrap.schema import OK
from pipelines.bootstrap.settings import BootstrapSettings

ROWS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("stage-ckpt") / "ckpt")


def image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def batch(keys: list[str], captions: list[str | None] | None = None) -> dict[str, np.ndarray]:
    n = len(keys)
    rows = {"key": keys, "url": [f"http://example.invalid/{k}.jpg" for k in keys],
            "web_caption": captions or [f"a red square number {k}" for k in keys], "shard": [0] * n,
            "status": [OK] * n, "error": [None] * n, "image": [image(int(k)) for k in keys]}
    return {k: np.array(v, dtype=object) for k, v in rows.items()}


def settings(checkpoint: Path, **changes) -> BootstrapSettings:
    values = dict(input="in.parquet", output=Path("out"), captioner=checkpoint, filter=checkpoint,
                  min_length=3, max_length=12, num_captions=2)
    values.update(changes)
    return BootstrapSettings(**values)


def captions(checkpoint: Path, keys: list[str] | None = None, **changes) -> list[list[str]]:
    keys = keys or [str(i) for i in range(ROWS)]
    return CaptionStage(settings(checkpoint, **changes))(batch(keys)).column("synthetic_captions").to_pylist()


@pytest.mark.slow
def test_seed_decides_the_captions_and_a_row_does_not_depend_on_its_batch(checkpoint):
    first = captions(checkpoint, seed=1, top_p=1.0)
    assert first == captions(checkpoint, seed=1, top_p=1.0)
    assert first != captions(checkpoint, seed=2, top_p=1.0)
    alone = captions(checkpoint, keys=["3"], seed=1, top_p=1.0)
    assert alone[0] == first[3]


@pytest.mark.slow
def test_top_p_and_temperature_reach_the_sampler(checkpoint):
    def spread(**changes) -> int:  # distinct captions over seeds
        return len({tuple(captions(checkpoint, seed=s, **changes)[0]) for s in range(4)})

    # a nucleus this small holds one token: sampling is greedy, so every seed agrees
    assert spread(top_p=1e-6) == 1
    assert spread(top_p=1.0) > 1
    # a temperature this low makes one token hold all the mass
    assert spread(top_p=1.0, temperature=1e-6) == 1


@pytest.mark.slow
def test_max_length_cuts_the_same_draws_and_the_prompt_conditions_them(checkpoint):
    # the same seed draws the same tokens; a shorter max_length stops earlier, so each caption
    # is a prefix of the longer run's (min_length 0: no step is forced either way)
    short = captions(checkpoint, max_length=6, min_length=0)
    long = captions(checkpoint, max_length=16, min_length=0)
    pairs = [(a, b) for row_a, row_b in zip(short, long) for a, b in zip(row_a, row_b)]
    assert all(b.startswith(a) for a, b in pairs)
    assert any(len(a) < len(b) for a, b in pairs)
    # another prompt is another context for the decoder
    assert captions(checkpoint, prompt="an image of a blue ") != captions(checkpoint)
    with pytest.raises(ValueError, match="prompt"):
        captions(checkpoint, prompt="a picture of a red square on the left of " * 3, max_length=12)


def test_beam_gives_num_captions_distinct_captions(checkpoint):
    rows = captions(checkpoint, decoding="beam", num_beams=3, num_captions=3)
    assert all(len(r) == 3 for r in rows)
    # beam search ignores the seed
    assert rows == captions(checkpoint, decoding="beam", num_beams=3, num_captions=3, seed=7)


def filtered(checkpoint: Path, **changes) -> list[dict]:
    stage_settings = settings(checkpoint, **changes)
    with_captions = CaptionStage(stage_settings)(batch([str(i) for i in range(ROWS)]))
    columns = {name: np.array(with_captions.column(name).to_pylist(), dtype=object)
               for name in with_captions.column_names}
    return FilterStage(stage_settings)(columns).to_pylist()


def test_keep_best_keeps_the_highest_scoring_synthetic_caption(checkpoint):
    rows = filtered(checkpoint, num_captions=3, threshold=0.0, keep="best")
    for r in rows:
        assert sum(r["synthetic_kept"]) == 1
        assert r["synthetic_kept"][int(np.argmax(r["synthetic_itm"]))]
    every = filtered(checkpoint, num_captions=3, threshold=0.0, keep="all")
    assert all(all(r["synthetic_kept"]) for r in every)
    # the same scores either way: --keep decides, it does not score
    assert [s for r in every for s in r["synthetic_itm"]] == pytest.approx(
        [s for r in rows for s in r["synthetic_itm"]])


def test_threshold_and_keep_all_web(checkpoint):
    rows = filtered(checkpoint, threshold=1.0)
    assert not any(r["web_kept"] or any(r["synthetic_kept"]) for r in rows)
    rows = filtered(checkpoint, threshold=1.0, filter_web=False)
    assert all(r["web_kept"] for r in rows) and not any(any(r["synthetic_kept"]) for r in rows)
    # a threshold between the scores splits them by score
    scores = sorted(s for r in rows for s in [r["web_itm"], *r["synthetic_itm"]])
    middle = scores[len(scores) // 2]
    for r in filtered(checkpoint, threshold=middle):
        assert r["web_kept"] == (r["web_itm"] >= middle)
        assert r["synthetic_kept"] == [s >= middle for s in r["synthetic_itm"]]
