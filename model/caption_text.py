"""BLIP's caption clean-up (`pre_caption` in its data/utils.py), applied to every caption its
datasets read: pre-training, fine-tuning and retrieval text. Written from its description:

  - lowercase;
  - each of . ! " ( ) * # : ; ~ becomes a space (other punctuation -- commas, apostrophes,
    question marks, hyphens, slashes -- stays);
  - runs of two or more whitespace characters become one space, and the ends are stripped;
  - at most `max_words` words (split on single spaces), 30 in BLIP's training datasets.
"""

from __future__ import annotations

import re

BLIP_MAX_WORDS = 30
_STRIPPED = re.compile(r'[.!"()*#:;~]')
_RUNS = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int = BLIP_MAX_WORDS) -> str:
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    text = _RUNS.sub(" ", _STRIPPED.sub(" ", text.lower()))
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text
