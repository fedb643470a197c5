"""Scoring: each image through the ViT once; scores equal per-pair ITM and ITC."""

import pytest
import torch

from model.med import MED
from model.scoring import score_captions
from tests.model_helpers import CORPUS, jitter, pixels, small_config, tiny_tokenizer

CAPTIONS = [
    [CORPUS[0], CORPUS[5], CORPUS[9]],
    [],  # an image whose captions all failed upstream
    [CORPUS[17]],
    [CORPUS[3], "a picture of something that the toy world never says"],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def med(tok):
    torch.manual_seed(0)
    model = MED(small_config(tok))
    jitter(model, scale=0.1)
    return model.eval()


def test_each_image_is_encoded_once(med, tok):
    images = pixels(med.config, batch=4, seed=1)
    batches: list[int] = []
    handle = med.vision.register_forward_hook(lambda m, args, kwargs_out: batches.append(1))
    calls = []
    real = med.encode_image
    med.encode_image = lambda px, **kw: (calls.append(px.shape[0]), real(px, **kw))[1]  # type: ignore[method-assign]
    try:
        result = score_captions(med, tok, images, CAPTIONS)
    finally:
        del med.encode_image
        handle.remove()
    assert calls == [3]  # one call, the three images that have captions
    assert len(batches) == 1
    assert [len(r) for r in result.itm] == [3, 0, 1, 2] == [len(r) for r in result.itc]


def test_scores_equal_per_pair_itm_and_itc(med, tok):
    images = pixels(med.config, batch=4, seed=1)
    result = score_captions(med, tok, images, CAPTIONS, chunk_size=2)  # chunks cross image borders
    with torch.no_grad():
        for i, caps in enumerate(CAPTIONS):
            embeds = med.encode_image(images[i : i + 1])
            for j, caption in enumerate(caps):
                ids, mask = tok.encode([caption], med.config.max_text_len)
                prob = med.itm_logits(ids, mask, embeds).softmax(dim=-1)[0, 1]
                cos = (med.image_feature(embeds) * med.text_feature(med.encode_text(ids, mask))).sum()
                assert result.itm[i][j] == pytest.approx(float(prob), abs=1e-5)
                assert result.itc[i][j] == pytest.approx(float(cos), abs=1e-5)
                assert 0.0 <= result.itm[i][j] <= 1.0 and -1.0 <= result.itc[i][j] <= 1.0


def test_no_captions_at_all_and_mismatched_input(med, tok):
    images = pixels(med.config, batch=2, seed=1)
    assert score_captions(med, tok, images, [[], []]).itm == [[], []]
    with pytest.raises(ValueError, match="2 images"):
        score_captions(med, tok, images, [["x"]])
