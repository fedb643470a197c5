"""Losses, hard negatives, momentum encoders and queues, and the training step."""

import pytest
import torch
import torch.nn.functional as F

from model import losses as L
from model.med import MED
from model.momentum import MomentumEncoders
from model.pretrain_task import TrainingTask, ramped_alpha
from tests.model_helpers import pixels, small_config, tiny_tokenizer, CORPUS

IMAGE_IDS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])  # image 0 has 2 captions, image 2 has 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _batch(tok, config, seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = tok.encode([CORPUS[i * 7] for i in range(len(IMAGE_IDS))], config.max_text_len)
    # rows of the same image share the pixels, as a data loader without augmentation gives them
    images = pixels(config, batch=int(IMAGE_IDS.max()) + 1, seed=seed)[IMAGE_IDS]
    return {"pixel_values": images, "input_ids": ids, "attention_mask": mask, "image_ids": IMAGE_IDS}


# ---- ITC ---------------------------------------------------------------------------------------
def _itc_reference(img, txt, img_k, txt_k, ids, key_ids, temp, alpha, img_m, txt_m):
    """Row by row, straight from the formulas in BLIP's retrieval model."""
    total = 0.0
    for q, keys, q_m, keys_m in ((img, txt_k, img_m, txt_k), (txt, img_k, txt_m, img_k)):
        for b in range(q.shape[0]):
            pos = torch.tensor([float(ids[b] == k) for k in key_ids])
            onehot = pos / pos.sum()
            soft = torch.softmax(keys_m @ q_m[b] / temp, dim=0)
            target = alpha * soft + (1 - alpha) * onehot
            total += -(torch.log_softmax(keys @ q[b] / temp, dim=0) * target).sum() / q.shape[0] / 2
    return total


def test_itc_matches_reference_with_shared_image_ids():
    gen = torch.Generator().manual_seed(1)
    unit = lambda n: F.normalize(torch.randn(n, 16, generator=gen), dim=-1)  # noqa: E731
    img, txt, img_m, txt_m = unit(8), unit(8), unit(8), unit(8)
    queue_img, queue_txt, queue_ids = unit(5), unit(5), torch.tensor([2, 9, 9, 0, 7])
    img_k, txt_k = torch.cat([img_m, queue_img]), torch.cat([txt_m, queue_txt])
    key_ids = torch.cat([IMAGE_IDS, queue_ids])
    temp = torch.tensor(0.07)
    got = L.itc_loss(img, txt, img_k, txt_k, IMAGE_IDS, key_ids, temp, 0.4, image_feat_m=img_m, text_feat_m=txt_m)
    want = _itc_reference(img, txt, img_k, txt_k, IMAGE_IDS, key_ids, 0.07, 0.4, img_m, txt_m)
    assert torch.allclose(got["itc"], want, atol=1e-5)
    assert got["sim_i2t"].shape == (8, 13) and not got["sim_i2t"].requires_grad


def test_itc_clamps_temperature_and_needs_momentum_features_for_alpha():
    f = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.arange(4)
    low = L.itc_loss(f, f, f, f, ids, ids, torch.tensor(1e-6), 0.0)["itc"]
    at_min = L.itc_loss(f, f, f, f, ids, ids, torch.tensor(L.TEMP_MIN), 0.0)["itc"]
    assert torch.allclose(low, at_min)
    with pytest.raises(ValueError, match="momentum"):
        L.itc_loss(f, f, f, f, ids, ids, torch.tensor(0.07), 0.4)


# ---- hard negatives ----------------------------------------------------------------------------
def test_hard_negatives_never_show_the_same_image():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        # strongly favour same-image pairs, so a leak in the mask would show at once
        sim = torch.randn(8, 8, generator=gen) + 50.0 * (IMAGE_IDS[:, None] == IMAGE_IDS[None, :])
        neg_text, neg_image = L.sample_hard_negatives(sim, sim.t(), IMAGE_IDS, gen)
        assert (neg_text >= 0).all() and (neg_image >= 0).all()
        assert (IMAGE_IDS[neg_text] != IMAGE_IDS).all()
        assert (IMAGE_IDS[neg_image] != IMAGE_IDS).all()


def test_hard_negatives_follow_softmaxed_similarity():
    # 2000 images with one caption each, in 500 groups of 4 identical similarity rows: each
    # row's draw is one sample of the same distribution over its own group's 3 other texts.
    groups, ids = 500, torch.arange(2000)
    block = torch.tensor([[9.0, 1.0, 2.0, 0.0]] * 4)
    eye = torch.eye(groups)
    sim = torch.kron(eye, block) - 1e4 * (1 - torch.kron(eye, torch.ones(4, 4)))
    neg_text, _ = L.sample_hard_negatives(sim, sim, ids, torch.Generator().manual_seed(0))
    row0 = neg_text[0::4] - torch.arange(0, 2000, 4)  # what row 0 of each group drew, 1..3
    counts = torch.bincount(row0, minlength=4).float()
    want = torch.softmax(torch.tensor([1.0, 2.0, 0.0]), 0)  # over the allowed texts 1, 2, 3
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / groups, want, atol=0.05)


def test_hard_negatives_mark_rows_without_a_candidate():
    ids = torch.tensor([3, 3, 3])
    neg_text, neg_image = L.sample_hard_negatives(torch.zeros(3, 3), torch.zeros(3, 3), ids)
    assert neg_text.tolist() == [-1, -1, -1] and neg_image.tolist() == [-1, -1, -1]
    pair_ids, _, pair_images, labels = L.itm_pairs(
        torch.arange(3)[:, None], torch.ones(3, 1), torch.arange(3.0)[:, None, None], neg_text, neg_image
    )
    assert labels.tolist() == [1, 1, 1] and pair_ids.shape[0] == 3


def test_itm_pairs_order_positives_then_negative_images_then_negative_texts():
    ids = torch.arange(3)[:, None] * 10
    embeds = torch.arange(3.0)[:, None, None]
    neg_text, neg_image = torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1])
    pair_ids, _, pair_images, labels = L.itm_pairs(ids, torch.ones(3, 1), embeds, neg_text, neg_image)
    assert pair_ids[:, 0].tolist() == [0, 10, 20, 0, 10, 20, 10, 20, 0]
    assert pair_images.flatten().tolist() == [0, 1, 2, 2, 0, 1, 0, 1, 2]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


# ---- LM ----------------------------------------------------------------------------------------
def test_lm_targets_mask_pad_and_prompt():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0, 0]])
    mask = (ids != 0).long()
    targets = L.lm_targets(ids, mask, pad_id=0, prompt_length=3)
    assert targets.tolist() == [[-100, -100, -100, 12, 13, 3, -100, -100]]


def test_lm_loss_equals_transformers_own_smoothed_loss(tok):
    config = small_config(tok)
    med = MED(config).eval()
    batch = _batch(tok, config)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_embeds = med.encode_image(batch["pixel_values"])
    targets = L.lm_targets(ids, mask, config.tokens.pad, prompt_length=2)
    ours = L.lm_loss(med.lm_logits(ids, mask, image_embeds), targets)["lm"]
    med.text_decoder.label_smoothing = 0.1  # transformers' default is 0.0; BLIP's is 0.1
    dec_ids = ids.clone()
    dec_ids[:, 0] = config.tokens.dec
    theirs = med.text_decoder(
        input_ids=dec_ids, attention_mask=mask, encoder_hidden_states=image_embeds, labels=targets
    ).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_lm_loss_is_zero_not_nan_when_every_target_is_masked():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    masked = torch.full((2, 5), L.IGNORE_INDEX)
    loss = L.lm_loss(logits, masked)["lm"]
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, so a step over such a batch changes nothing
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # one counting target is enough for a real loss
    masked[0, 3] = 4
    assert L.lm_loss(logits, masked)["lm"].item() > 0


# ---- gradients through the shared modules ------------------------------------------------------
def test_lm_and_itm_both_reach_the_shared_modules(tok):
    config = small_config(tok)
    batch = _batch(tok, config)
    for loss_name in ("lm", "itm"):
        med = MED(config)
        task = TrainingTask(med, "pretrain", queue_size=16)
        task.step(batch, generator=torch.Generator().manual_seed(0))[loss_name].backward()
        for layer in med.text_encoder.encoder.layer:  # the same objects as the decoder's
            for shared in (layer.crossattention.self.key.weight, layer.intermediate.dense.weight, layer.output.dense.weight):
                assert shared.grad is not None and shared.grad.abs().sum() > 0, loss_name
        enc_self = med.text_encoder.encoder.layer[0].attention.self.query.weight.grad
        dec_self = med.text_decoder.bert.encoder.layer[0].attention.self.query.weight.grad
        # each mode's own self-attention is trained by its own loss only
        own, other = (dec_self, enc_self) if loss_name == "lm" else (enc_self, dec_self)
        assert own is not None and own.abs().sum() > 0
        assert other is None or other.abs().sum() == 0


# ---- momentum ----------------------------------------------------------------------------------
def test_momentum_update_is_the_ema(tok):
    med = MED(small_config(tok))
    mom = MomentumEncoders(med, queue_size=8, momentum=0.9)
    with torch.no_grad():
        for p in med.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in mom.state_dict().items()}
    mom.update(med)
    online = med.state_dict()
    for name, value in mom.state_dict().items():
        if "queue" in name or name.endswith("position_ids"):
            continue
        want = 0.9 * before[name] + 0.1 * online[name]
        assert torch.allclose(value, want, atol=1e-6), name
    assert not any(p.requires_grad for p in mom.parameters())
    assert not any("crossattention" in n for n in mom.state_dict())


def test_queue_wraps_around_when_size_is_not_a_multiple_of_the_batch(tok):
    mom = MomentumEncoders(MED(small_config(tok)), queue_size=10)
    dim = mom.image_queue.shape[1]
    stream = torch.arange(23)
    for start in range(0, 23, 4):  # batches of 4, 4, 4, 4, 4, 3
        ids = stream[start : start + 4]
        feats = ids[:, None].float().expand(-1, dim)
        mom.enqueue(feats, -feats, ids)
        seen = min(start + len(ids), 10)
        assert int(mom.queue_filled) == seen
        img, txt, q_ids = mom.queued()
        assert sorted(q_ids.tolist()) == stream[: start + len(ids)][-seen:].tolist()
        assert torch.equal(img[:, 0], q_ids.float()) and torch.equal(txt[:, 0], -q_ids.float())
    assert int(mom.queue_ptr) == 23 % 10
    mom.enqueue(torch.zeros(13, dim), torch.zeros(13, dim), torch.arange(100, 113))  # larger than the queue
    assert sorted(mom.queued()[2].tolist()) == list(range(103, 113))


def test_queue_state_round_trips_through_state_dict(tok):
    med = MED(small_config(tok))
    mom = MomentumEncoders(med, queue_size=6)
    mom.enqueue(torch.ones(4, mom.image_queue.shape[1]), torch.ones(4, mom.image_queue.shape[1]), torch.arange(4))
    fresh = MomentumEncoders(med, queue_size=6)
    fresh.load_state_dict(mom.state_dict())
    assert int(fresh.queue_ptr) == 4 and int(fresh.queue_filled) == 4
    assert torch.equal(fresh.id_queue, mom.id_queue)


# ---- the step, 50 times on one batch -----------------------------------------------------------
def test_each_loss_falls_on_a_fixed_batch(tok):
    torch.manual_seed(0)
    config = small_config(tok)
    med = MED(config)
    # The queue is full from step 1 on. BLIP's m = 0.995 would keep the ITC keys near their
    # random start for all 50 steps; 0.9 lets them follow, so that ITC can fall in a short test.
    # Positives by image id: this batch repeats identical pixels across an image's captions, where
    # BLIP's pre-training positives (the pair only) would label one (pixels, text) both ways in ITM.
    task = TrainingTask(med, "pretrain", queue_size=len(IMAGE_IDS), momentum=0.9, positives="image")
    batch = _batch(tok, config)
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(50):
        out = task.step(batch, alpha=ramped_alpha(step, 10), generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    for name in ("itc", "itm", "lm"):
        first = sum(h[name] for h in history[1:6]) / 5
        last = sum(h[name] for h in history[-5:]) / 5
        assert last < 0.8 * first, (name, first, last)


def test_task_kinds_compute_their_losses_only(tok):
    config = small_config(tok)
    batch = _batch(tok, config)
    med = MED(config)
    assert set(TrainingTask(med, "captioner", prompt_length=2).step(batch)) == {"lm", "loss"}
    filt = TrainingTask(med, "filter", queue_size=4)
    assert {"itc", "itm", "loss"} <= set(filt.step(batch)) and "lm" not in filt.step(batch)
    assert TrainingTask(med, "captioner").momentum is None
    with pytest.raises(ValueError, match="unknown task"):
        TrainingTask(med, "vqa")  # type: ignore[arg-type]
