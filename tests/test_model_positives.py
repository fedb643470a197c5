"""ITC/ITM positives as BLIP's code has them: the pair itself in pre-training, every caption of the
image in the filter's (retrieval) fine-tune. Two captions of one image are each other's negatives
in the first and not in the second."""

import pytest
import torch
import torch.nn.functional as F

from model.med import MED
from model.pretrain_task import TrainingTask
from tests.model_helpers import jitter, pixels, small_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAPTIONS = ["a big red circle on the left", "a red circle in the middle", "a small blue star near the top"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _med(tok) -> MED:
    torch.manual_seed(0)
    med = MED(small_config(tok)).eval()
    jitter(med, scale=0.3)  # a random init gives every text nearly one feature; spread them
    with torch.no_grad():
        med.temp.fill_(0.05)  # sharp enough that the targets' difference shows in the loss
    return med


def _batch(tok, config, image_ids: list[int]) -> dict[str, torch.Tensor]:
    ids, mask = tok.encode(CAPTIONS[: len(image_ids)], config.max_text_len)
    # every row its own pixels, as two random crops of one image are: with identical pixels the
    # two targets give the same ITC (equal columns), and only the queue would tell them apart
    images = pixels(config, batch=len(image_ids), seed=1)
    return {"pixel_values": images, "input_ids": ids, "attention_mask": mask, "image_ids": torch.tensor(image_ids)}


def _itc_with_targets(med: MED, batch, targets: torch.Tensor) -> torch.Tensor:
    """ITC (alpha 0, empty queue: the keys are this batch's momentum features, equal to the online
    ones on the first step) with the given hard targets."""
    with torch.no_grad():
        img = med.image_feature(med.encode_image(batch["pixel_values"]))
        txt = med.text_feature(med.encode_text(batch["input_ids"], batch["attention_mask"]))
        temp = med.temp.clamp(0.001, 0.5)
    sim = img @ txt.t() / temp
    i2t = -(F.log_softmax(sim, dim=1) * targets).sum(dim=1).mean()
    t2i = -(F.log_softmax(sim.t(), dim=1) * targets).sum(dim=1).mean()
    return (i2t + t2i) / 2


@pytest.mark.parametrize("kind, positives", [("pretrain", "pair"), ("filter", "image")])
def test_itc_positives_of_each_task(tok, kind, positives):
    med = _med(tok)
    batch = _batch(tok, med.config, [7, 7, 9])  # rows 0 and 1: two captions of image 7
    task = TrainingTask(med, kind, queue_size=8)
    assert task.positives == positives
    got = task.step(batch, alpha=0.0, generator=torch.Generator().manual_seed(0))["itc"]
    pair_targets = torch.eye(3)
    image_targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    want, other = (pair_targets, image_targets) if positives == "pair" else (image_targets, pair_targets)
    assert torch.allclose(got, _itc_with_targets(med, batch, want), atol=1e-5)
    assert not torch.allclose(got, _itc_with_targets(med, batch, other), atol=1e-3)


@pytest.mark.parametrize("kind, positives, itm_rows", [
    ("pretrain", None, 6),      # each caption is the other's hard negative: 2 positives + 2 + 2 negatives
    ("filter", None, 2),        # same image: no negative to draw, the 2 positives only
    ("pretrain", "image", 2),   # the setting overrides the task's default
    ("filter", "pair", 6),
])
def test_itm_negatives_of_two_captions_of_one_image(tok, kind, positives, itm_rows):
    med = _med(tok)
    seen: list[int] = []
    real = med.itm_logits

    def recording(ids, mask, image_embeds):
        seen.append(ids.shape[0])
        return real(ids, mask, image_embeds)

    med.itm_logits = recording  # spy only: the real ITM still runs
    task = TrainingTask(med, kind, queue_size=8, positives=positives)
    task.step(_batch(tok, med.config, [7, 7]), alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert seen == [itm_rows]


def test_queued_features_are_negatives_in_pretraining_and_positives_by_id_in_the_fine_tune(tok):
    med = _med(tok)
    first = _batch(tok, med.config, [7, 9])
    second = {**first, "pixel_values": pixels(med.config, batch=2, seed=2)}  # other crops of images 7, 9

    def features(batch):
        with torch.no_grad():
            img = med.image_feature(med.encode_image(batch["pixel_values"]))
            return img, med.text_feature(med.encode_text(batch["input_ids"], batch["attention_mask"]))

    (img_a, txt_a), (img_b, txt_b) = features(first), features(second)
    temp = med.temp.clamp(0.001, 0.5)
    # second step, no optimiser step between: keys = [this batch; the first batch, queued]
    sim_i2t = img_b @ torch.cat([txt_b, txt_a]).t() / temp
    sim_t2i = txt_b @ torch.cat([img_b, img_a]).t() / temp

    def itc(targets):
        return (-(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean() - (F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()) / 2

    pair = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])       # the queued pairs are negatives
    image = torch.tensor([[0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5]])  # the queued pair of the same image is a positive
    for kind, want, other in (("pretrain", pair, image), ("filter", image, pair)):
        task = TrainingTask(med, kind, queue_size=8)
        task.step(first, alpha=0.0)
        got = task.step(second, alpha=0.0)["itc"]
        assert torch.allclose(got, itc(want), atol=1e-5), kind
        assert not torch.allclose(got, itc(other), atol=1e-3), kind
        assert task.momentum.id_queue[:2].tolist() == [7, 9]  # image ids are queued in both modes


def test_unknown_positives_is_refused(tok):
    with pytest.raises(ValueError, match="positives"):
        TrainingTask(MED(small_config(tok)), "pretrain", positives="caption")  # type: ignore[arg-type]
