"""Caption generation: settings, per-row seeds, K captions, KV cache, lengths, sampling rules."""

import pytest
import torch
from pydantic import ValidationError

from model.config import TokenIds
from model.decode_cache import StaticCacheDecoder
from model.generation import (
    GenerationSettings, _forbid_eos, _nucleus_pick, _penalize_repeats, decoder_prefix, generate_captions, row_seed,
    sampling_distribution,
)
from model.med import MED
from tests.model_helpers import jitter, pixels, small_config, tiny_tokenizer

SHORT = dict(min_length=14, max_length=24)  # the tiny tokenizer spells "picture": the prompt takes 11


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def med(tok):
    torch.manual_seed(0)
    model = MED(small_config(tok))
    jitter(model, scale=0.2)  # a random init barely looks at the image; noise makes rows differ
    return model.eval()


@pytest.fixture(scope="module")
def images(med):
    return pixels(med.config, batch=8, seed=3)


class IdTokenizer:
    """Decodes to the ids themselves, so that tests can count and read tokens."""

    def __init__(self, tokens: TokenIds):
        self.tokens = tokens

    def encode_prompt(self, text: str) -> list[int]:
        return [self.tokens.cls] + [10 + len(word) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


# ---- settings ------------------------------------------------------------------------------------
def test_settings_are_frozen_validated_and_follow_blip_defaults():
    s = GenerationSettings()
    assert (s.decoding, s.top_k, s.top_p, s.max_length, s.min_length, s.prompt) == ("nucleus", 50, 0.9, 30, 10, "a picture of ")
    assert s.penalty == 1.1 and GenerationSettings(decoding="beam").penalty == 1.0
    assert GenerationSettings(repetition_penalty=1.3).penalty == 1.3
    with pytest.raises(ValidationError):
        s.top_p = 0.5  # type: ignore[misc]
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=0), dict(num_captions=0),
                dict(repetition_penalty=0.9), dict(min_length=20, max_length=10),
                dict(decoding="beam", num_beams=2, num_captions=3), dict(decoding="greedy"), dict(topp=0.9)):
        with pytest.raises(ValidationError):
            GenerationSettings(**bad)


def test_prefix_puts_dec_in_place_of_cls(tok):
    prefix = decoder_prefix(tok, "a picture of ", tok.ids)
    assert prefix[0] == tok.ids.dec and tok.ids.cls not in prefix and tok.ids.sep not in prefix
    assert decoder_prefix(tok, "", tok.ids) == [tok.ids.dec]


def test_bad_calls_fail_before_any_work(med, tok, images):
    with pytest.raises(ValueError, match="one seed per image"):
        generate_captions(med, tok, images, [1, 2], GenerationSettings(**SHORT))
    with pytest.raises(ValueError, match="positions"):
        generate_captions(med, tok, images, list(range(8)), GenerationSettings(max_length=100))
    assert generate_captions(med, tok, images[:0], [], GenerationSettings(**SHORT)) == []


# ---- per-row seeds and K captions ----------------------------------------------------------------
@pytest.mark.parametrize("decoding", ["nucleus", "beam"])
def test_a_rows_captions_do_not_depend_on_its_batch(med, tok, images, decoding):
    settings = GenerationSettings(decoding=decoding, num_captions=2, **SHORT)
    seeds = [101, 7, 7, 55, 3, 8, 13, 21]
    together = generate_captions(med, tok, images, seeds, settings)
    alone = [generate_captions(med, tok, images[i : i + 1], [seeds[i]], settings)[0] for i in range(8)]
    order = [5, 2, 7, 0, 3, 1, 6, 4]
    shuffled = generate_captions(med, tok, images[order], [seeds[i] for i in order], settings)
    assert together == alone
    assert [shuffled[order.index(i)] for i in range(8)] == together
    assert len({c for caps in together for c in caps}) > 2  # the rows really differ


def test_k_captions_per_image_each_from_its_own_stream(med, tok, images):
    seeds = list(range(8))
    three = generate_captions(med, tok, images, seeds, GenerationSettings(num_captions=3, **SHORT))
    assert [len(caps) for caps in three] == [3] * 8
    assert all(len(set(caps)) > 1 for caps in three)
    # caption k depends on (seed, k) only, not on how many captions were asked for
    two = generate_captions(med, tok, images, seeds, GenerationSettings(num_captions=2, **SHORT))
    assert [caps[:2] for caps in three] == two
    other = generate_captions(med, tok, images, [s + 1000 for s in seeds], GenerationSettings(num_captions=2, **SHORT))
    assert other != two
    assert row_seed(1, 0) != row_seed(0, 1) and row_seed(5, 2) == row_seed(5, 2)


def test_beam_returns_its_best_hypotheses_in_order(med, tok, images):
    settings = GenerationSettings(decoding="beam", num_beams=4, num_captions=4, **SHORT)
    caps = generate_captions(med, tok, images[:2], [0, 0], settings)
    assert [len(c) for c in caps] == [4, 4] and all(len(set(c)) == 4 for c in caps)
    best = generate_captions(med, tok, images[:2], [0, 0], settings.model_copy(update={"num_captions": 1}))
    assert [c[:1] for c in caps] == best


# ---- KV cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        GenerationSettings(decoding="beam", num_beams=1, **SHORT),  # greedy
        GenerationSettings(decoding="beam", num_beams=3, num_captions=2, **SHORT),
        GenerationSettings(num_captions=2, **SHORT),
    ],
    ids=["greedy", "beam", "nucleus"],
)
def test_cache_and_full_recompute_give_the_same_captions(med, tok, images, settings):
    seeds = list(range(8))
    cached = generate_captions(med, tok, images, seeds, settings, use_cache=True)
    assert cached == generate_captions(med, tok, images, seeds, settings, use_cache=False)


def test_static_cache_logits_match_a_full_pass_as_rows_finish_and_images_are_compacted(med, images):
    """Rows leave the cache as they finish; once a quarter or more of the cached images have no
    row left, their cross-attention K/V are dropped. The logits of the rows still writing stay those of a
    full pass over their whole sequence (MED.lm_logits, no cache) at every step."""
    k, prefix = 2, [med.config.tokens.dec, 7, 8]
    with torch.no_grad():
        embeds = med.encode_image(images)
        decoder = StaticCacheDecoder(med, embeds, prefix, rows_per_image=k, max_length=12)
        rows = torch.arange(len(images) * k)  # row r: image r // k
        seqs = torch.tensor([prefix]).repeat(len(rows), 1)
        logits = decoder.first_logits
        slots = []
        for cur_len in range(len(prefix), 10):
            full = med.lm_logits(seqs, torch.ones_like(seqs), embeds[rows // k], replace_first=False)[:, -1, :]
            assert torch.allclose(logits, full, atol=1e-4), cur_len
            seqs = torch.cat([seqs, logits.argmax(-1, keepdim=True)], dim=1)
            # finish one row of image 0 at a time, then both rows of two more images
            drop = {4: [0], 5: [1, 2, 3], 6: [4, 5]}.get(cur_len, [])
            keep = torch.tensor([i for i, r in enumerate(rows.tolist()) if r not in drop], dtype=torch.long)
            if len(keep) < len(rows):
                rows, seqs = rows[keep], seqs[keep]
                decoder.keep_rows(keep)
            slots.append(decoder.cross[0][0].shape[0])
            logits = decoder.next_logits(seqs, cur_len + 1, first=False)
    # images 0 and 1 gone (2 of 8): compacted to 6; image 2 gone (1 of 6): its slot stays, empty
    assert slots == [8, 8, 6, 6, 6, 6, 6], slots


# ---- lengths, prompt, eval mode ------------------------------------------------------------------
def _biased(med: MED, token: int, bias: float) -> MED:
    biased = MED(med.config)
    biased.load_state_dict(med.state_dict())
    with torch.no_grad():
        biased.text_decoder.cls.predictions.decoder.bias[token] += bias
    return biased.eval()


@pytest.mark.parametrize("decoding", ["nucleus", "beam"])
def test_min_and_max_length_count_the_whole_sequence(med, images, decoding):
    ids = IdTokenizer(med.config.tokens)
    prompt_len = len(decoder_prefix(ids, "a picture of ", med.config.tokens))
    settings = GenerationSettings(decoding=decoding, **SHORT)
    # [SEP] wanted at every step: the caption ends as soon as min_length allows
    eager = generate_captions(_biased(med, med.config.tokens.sep, 50.0), ids, images[:2], [0, 1], settings)
    assert all(len(c.split()) == settings.min_length - prompt_len for caps in eager for c in caps)
    # [SEP] never wanted: the caption runs to max_length
    endless = generate_captions(_biased(med, med.config.tokens.sep, -1e4), ids, images[:2], [0, 1], settings)
    assert all(len(c.split()) == settings.max_length - prompt_len for caps in endless for c in caps)


def test_prompt_is_stripped_and_model_mode_restored(med, images):
    ids = IdTokenizer(med.config.tokens)
    loud = _biased(med, 50, 1e3)  # token 50 wins every step, repetition penalty or not
    loud.train()
    caps = generate_captions(loud, ids, images[:1], [0], GenerationSettings(**SHORT))
    prompt_len = len(decoder_prefix(ids, "a picture of ", med.config.tokens))
    assert caps == [[" ".join(["50"] * (SHORT["max_length"] - prompt_len))]]
    assert loud.training


# ---- sampling rules ------------------------------------------------------------------------------
def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]])).expand(1000, -1)
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)[:-1]
    picks = _nucleus_pick(logits, u, GenerationSettings(top_p=0.5))
    counts = torch.bincount(picks, minlength=4)
    assert counts[0] == counts[2] == 0  # 0.4 + 0.3 reach 0.5; the rest is cut
    assert abs(counts[1] / 1000 - 4 / 7) < 0.01
    assert (_nucleus_pick(logits, u, GenerationSettings(top_p=1e-6)) == 1).all()
    assert (_nucleus_pick(logits, u, GenerationSettings(top_k=1, top_p=1.0)) == 1).all()
    full = torch.bincount(_nucleus_pick(logits, u, GenerationSettings(top_p=1.0)), minlength=4) / 1000
    assert torch.allclose(full, torch.tensor([0.1, 0.4, 0.2, 0.3]), atol=0.01)


def test_repetition_penalty_is_transformers_rule():
    scores = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seqs = torch.tensor([[0, 1, 1]])
    assert torch.allclose(_penalize_repeats(scores, seqs, 2.0), torch.tensor([[1.0, -4.0, 1.0, 0.5]]))


def _transformers_distribution(logits, seqs, cur_len, settings, eos):
    """What transformers' generate(do_sample=True) samples from: its own processors and warpers,
    in its order (repetition penalty and min length on the logits, then temperature, top-k, top-p)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList, MinLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
        TopKLogitsWarper, TopPLogitsWarper,
    )

    steps = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(settings.penalty),
        MinLengthLogitsProcessor(settings.min_length, eos),
        TemperatureLogitsWarper(settings.temperature),
        TopKLogitsWarper(settings.top_k),
        TopPLogitsWarper(settings.top_p),
    ])
    return torch.softmax(steps(seqs[:, :cur_len], logits.clone()).double(), dim=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_distribution_matches_transformers_processors(temperature):
    torch.manual_seed(0)
    vocab, eos, cur_len = 200, 3, 6
    logits = torch.randn(16, vocab) * 1.5
    seqs = torch.randint(0, vocab, (16, cur_len))
    settings = GenerationSettings(temperature=temperature)  # top-k 50, top-p 0.9, penalty 1.1, min 10
    ours = sampling_distribution(
        _forbid_eos(_penalize_repeats(logits, seqs, settings.penalty), cur_len, settings, eos), settings)
    theirs = _transformers_distribution(logits, seqs, cur_len, settings, eos)
    assert torch.equal(ours > 0, theirs > 0)  # the same tokens survive
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours[:, eos] == 0).all()
    # The order matters on these logits: top-p over the whole vocabulary keeps more than 50 tokens,
    # top-p after top-k fewer, so a top-p-only or top-p-then-top-k sampler would not match.
    top_p_only = sampling_distribution(logits, GenerationSettings(top_k=0))
    assert ((top_p_only > 0).sum(dim=1) > 50).all()
    assert ((ours > 0).sum(dim=1) < 50).all()


def test_top_k_zero_is_off_and_top_k_keeps_ties():
    logits = torch.log(torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]]))
    assert (sampling_distribution(logits, GenerationSettings(top_k=0, top_p=1.0)) > 0).all()
    kept = sampling_distribution(logits, GenerationSettings(top_k=2, top_p=1.0))
    assert (kept[0, :4] > 0).all() and kept[0, 4] == 0  # the 2nd value is tied three ways, as TopKLogitsWarper


def test_top_k_sorts_only_its_candidates_and_samples_exactly_as_a_full_sort(monkeypatch):
    """With top-k on, only the candidates are sorted (a full sort of the vocabulary at every step
    was the sampler's cost); the distribution and every draw are those of the full stable sort,
    ties with the k-th token included."""
    import model.generation as generation

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g, dtype=torch.float64)
    logits[:, ::7] = logits[:, :1]  # ties, some of them at the k-th place
    logits = logits.round(decimals=1)
    uniforms = torch.rand(6, generator=g, dtype=torch.float64)
    for top_k in (1, 5, 50, 299):
        for top_p in (1.0, 0.9, 0.3):
            settings = GenerationSettings(top_k=top_k, top_p=top_p)
            fast = (sampling_distribution(logits, settings), generation._nucleus_pick(logits, uniforms, settings))
            assert generation._sorted_candidates(torch.softmax(logits, -1), top_k)[0].shape[1] < 300
            with monkeypatch.context() as patch:
                patch.setattr(generation, "_sorted_candidates",
                              lambda probs, k: probs.sort(dim=-1, descending=True, stable=True))
                full = (sampling_distribution(logits, settings), generation._nucleus_pick(logits, uniforms, settings))
            assert torch.equal(fast[0], full[0]) and torch.equal(fast[1], full[1]), (top_k, top_p)
