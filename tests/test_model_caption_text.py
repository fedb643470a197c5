"""BLIP's pre_caption: lowercase, its punctuation set to spaces, whitespace runs collapsed, 30 words."""

import pytest

from model.caption_text import pre_caption


@pytest.mark.parametrize("raw, clean", [
    ("A Red Circle.", "a red circle"),
    ("IMG_0042.JPG", "img_0042 jpg"),
    ('"Click to enlarge!" (stock photo)', "click to enlarge stock photo"),
    ("a dog: running; fast ~ *wow* #tag", "a dog running fast wow tag"),
    ("it's a dog, isn't it? yes-no a/b", "it's a dog, isn't it? yes-no a/b"),  # BLIP keeps these
    ("  two   spaces \t and\ttab  ", "two spaces and\ttab"),  # a single tab is not a run
    ("...", ""),
    ("", ""),
])
def test_pre_caption_examples(raw, clean):
    assert pre_caption(raw) == clean


def test_pre_caption_keeps_at_most_30_words():
    words = [f"w{i}" for i in range(40)]
    assert pre_caption(" ".join(words)) == " ".join(words[:30])
    assert pre_caption(" ".join(words), max_words=5) == "w0 w1 w2 w3 w4"
    assert pre_caption(" ".join(words[:30])) == " ".join(words[:30])
    with pytest.raises(ValueError, match="max_words"):
        pre_caption("a b", max_words=0)
