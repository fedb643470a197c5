"""The filter projects an image's cross-attention keys and values once for all its captions
(MED.itm_logits_grouped, used by score_captions): the scores are those of one transformers
BlipForImageTextRetrieval call per caption, and the K/V projections see each image once."""

import pytest
import torch
from transformers import BlipForImageTextRetrieval

from model.hf_interop import med_from_retrieval_state
from model.med import group_slots
from model.scoring import _whole_image_chunks, score_captions
from tests.model_helpers import CORPUS, blip_config, jitter, pixels, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# uneven groups, an image with none, and one caption shared by two images
CAPTIONS = [[CORPUS[0], CORPUS[7], CORPUS[30]], [], [CORPUS[11]], [CORPUS[3], CORPUS[0]]]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    """transformers' retrieval model (random + noise) and the MED loaded from its weights."""
    torch.manual_seed(0)
    cfg = small_config(tok)
    hf = BlipForImageTextRetrieval(blip_config(cfg)).eval()
    jitter(hf, scale=0.1)
    med, _, _ = med_from_retrieval_state(hf.state_dict(), cfg, "test")
    return hf, med.eval()


def _with_first(ids: torch.Tensor, token: int) -> torch.Tensor:
    ids = ids.clone()
    ids[:, 0] = token
    return ids


@torch.no_grad()
def test_grouped_itm_equals_transformers_one_call_per_caption(models, tok):
    hf, med = models
    cfg = med.config
    images = pixels(cfg, batch=4, seed=5)
    owner = torch.tensor([3, 0, 2, 0, 3, 0])  # any order
    texts = [CORPUS[i] for i in (1, 2, 3, 4, 5, 6)]
    ids, mask = tok.encode(texts, cfg.max_text_len)
    grouped = med.itm_logits_grouped(ids, mask, med.encode_image(images), owner).softmax(-1)[:, 1]
    for i, image in enumerate(owner.tolist()):
        theirs = hf(input_ids=_with_first(ids[i : i + 1], cfg.tokens.enc), attention_mask=mask[i : i + 1],
                    pixel_values=images[image : image + 1]).itm_score.softmax(-1)[0, 1]
        assert grouped[i].item() == pytest.approx(theirs.item(), abs=1e-5)
    assert grouped.std() > 1e-3  # the scores differ, so a mix-up of images or captions would show


def test_score_captions_projects_each_image_once(models, tok):
    hf, med = models
    images = pixels(med.config, batch=4, seed=6)
    rows: list[int] = []
    hook = med.text_encoder.encoder.layer[0].crossattention.self.key.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        result = score_captions(med, tok, images, CAPTIONS)
    finally:
        hook.remove()
    assert rows == [3]  # one projection of the 3 images that have captions, not one per caption (6)
    with torch.no_grad():
        for i, caps in enumerate(CAPTIONS):
            for j, caption in enumerate(caps):
                ids, mask = tok.encode([caption], med.config.max_text_len)
                theirs = hf(input_ids=_with_first(ids, med.config.tokens.enc), attention_mask=mask,
                            pixel_values=images[i : i + 1]).itm_score.softmax(-1)[0, 1]
                assert result.itm[i][j] == pytest.approx(theirs.item(), abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 4, 256])
def test_chunks_cut_between_images_and_scores_do_not_depend_on_them(models, tok, chunk):
    _, med = models
    images = pixels(med.config, batch=4, seed=6)
    reference = score_captions(med, tok, images, CAPTIONS, chunk_size=256)
    result = score_captions(med, tok, images, CAPTIONS, chunk_size=chunk)
    for ours, ref in zip(result.itm + result.itc, reference.itm + reference.itc):
        assert ours == pytest.approx(ref, abs=1e-5)


def test_chunk_and_slot_plans():
    # image 0 has 3 captions, 1 has 1, 2 has 2
    assert _whole_image_chunks([0, 0, 0, 1, 2, 2], 4) == [(0, 4), (4, 6)]
    assert _whole_image_chunks([0, 0, 0, 1, 2, 2], 2) == [(0, 2), (2, 4), (4, 6)]
    assert _whole_image_chunks([0, 0, 0, 1, 2, 2], 100) == [(0, 6)]
    slots, width = group_slots(torch.tensor([2, 0, 2, 2, 1]), 3)
    assert width == 3 and slots.tolist() == [6, 0, 7, 8, 3]


def test_per_caption_baseline_gives_the_same_scores(models, tok):
    """shared_cross_kv=False (the benchmark's baseline) projects the K/V once per caption and
    scores the same."""
    _, med = models
    images = pixels(med.config, batch=4, seed=6)
    rows: list[int] = []
    hook = med.text_encoder.encoder.layer[0].crossattention.self.key.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        baseline = score_captions(med, tok, images, CAPTIONS, shared_cross_kv=False)
    finally:
        hook.remove()
    assert rows == [6]  # one (1 + N)-token image per caption
    shared = score_captions(med, tok, images, CAPTIONS)
    for ours, ref in zip(shared.itm + shared.itc, baseline.itm + baseline.itc):
        assert ours == pytest.approx(ref, abs=1e-5)
