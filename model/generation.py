"""Caption generation with the MED's image-grounded decoder: nucleus sampling and beam search.

Written over `MED.lm_logits` rather than `transformers`' `generate()`, for two reasons that
CapFilt needs and `generate()` does not give:
  - a seed per row: each caption draws its uniforms from its own `torch.Generator`, seeded from
    (row seed, caption index), so a caption depends on its row and not on the batch it landed in;
  - K captions per image from one image pass, and the prompt's prefill (self- and cross-attention
    K/V) done once per image, then shared by its K rows.

Lengths count tokens as BLIP (through transformers' generate) counts them: the whole decoder
sequence, [DEC] and the prompt included; max_length includes the final [SEP], and [SEP] may not
be chosen while the sequence is shorter than min_length.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Protocol, Sequence

import torch

from model.config import TokenIds
from model.decode_cache import StaticCacheDecoder
from model.generation_settings import GenerationSettings  # its home; imported from here too
from model.med import MED


class PromptTokenizer(Protocol):
    def encode_prompt(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


def decoder_prefix(tokenizer: PromptTokenizer, prompt: str, tokens: TokenIds) -> list[int]:
    """[DEC] + the prompt's word pieces (the tokenizer's leading [CLS] replaced, no [SEP])."""
    ids = list(tokenizer.encode_prompt(prompt)) if prompt else []
    if ids and ids[0] == tokens.cls:
        ids = ids[1:]
    return [tokens.dec, *ids]


def row_seed(seed: int, caption_index: int) -> int:
    """A 63-bit seed for caption `caption_index` of a row: a hash, so that neighbouring seeds
    and indices give unrelated streams, and caption k is the same whatever K is."""
    digest = hashlib.blake2b(f"{seed}:{caption_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """No TF32 while generating. cuDNN convolutions (the ViT's patch embedding) default to TF32,
    whose algorithm, and so rounding, depends on the batch size: on an H100 it moved the tiny
    ViT's output by 1.5e-3 between a batch of 8 and batches of 1, enough to change sampled
    captions. In full fp32 the difference is rounding noise (~1e-6) and a draw flips only if its
    uniform lands that close to a CDF step."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def generate_captions(
    med: MED,
    tokenizer: PromptTokenizer,
    pixel_values: torch.Tensor,
    seeds: Sequence[int],
    settings: GenerationSettings = GenerationSettings(),
    use_cache: bool = True,
) -> list[list[str]]:
    """K = settings.num_captions captions for each of the B images, the prompt stripped.

    pixel_values: (B, 3, H, W), preprocessed; seeds: one per image (ignored by beam search,
    which is deterministic). use_cache=False recomputes the whole prefix at every step (the
    benchmark's baseline); both paths give the same captions up to float rounding.
    """
    if len(seeds) != pixel_values.shape[0]:
        raise ValueError(f"need one seed per image: {pixel_values.shape[0]} images, {len(seeds)} seeds")
    tokens = med.config.tokens
    prefix = decoder_prefix(tokenizer, settings.prompt, tokens)
    if len(prefix) >= settings.max_length:
        raise ValueError(f"the prompt takes {len(prefix)} tokens; max_length {settings.max_length} leaves no room")
    if settings.max_length > med.config.max_positions:
        raise ValueError(f"max_length {settings.max_length} exceeds the model's {med.config.max_positions} positions")
    if pixel_values.shape[0] == 0:
        return []
    with _eval_mode(med), _full_fp32(), torch.inference_mode():
        image_embeds = med.encode_image(pixel_values)  # (B, 1 + N, Dv), once per image
        decode = beam_search if settings.decoding == "beam" else _nucleus
        rows = decode(med, image_embeds, prefix, list(seeds), settings, use_cache)
    return [[tokenizer.decode(_caption_ids(row, len(prefix), tokens)) for row in image_rows] for image_rows in rows]


def _caption_ids(seq: list[int], prefix_len: int, tokens: TokenIds) -> list[int]:
    body = seq[prefix_len:]
    return body[: body.index(tokens.sep)] if tokens.sep in body else body


# ---- shared pieces ------------------------------------------------------------------------------
class _RecomputeDecoder:
    """Next-token logits with no cache: every step runs the decoder over the whole sequence so
    far (the benchmarks' baseline, and the reference the cached path is tested against)."""

    def __init__(self, med: MED, image_embeds: torch.Tensor, rows_per_image: int):
        self.med = med
        # (R, 1 + N, Dv); with one row per image, the rows are the images (no copy)
        self.embeds = image_embeds.repeat_interleave(rows_per_image, dim=0) if rows_per_image > 1 else image_embeds

    def next_logits(self, seqs: torch.Tensor, cur_len: int, first: bool) -> torch.Tensor:
        """seqs: (R, >= cur_len) of the live rows -> (R, V) logits for position cur_len."""
        mask = torch.ones(seqs.shape[0], cur_len, dtype=torch.long, device=seqs.device)
        return self.med.lm_logits(seqs[:, :cur_len], mask, self.embeds, replace_first=False)[:, -1, :].float()

    def keep_rows(self, index: torch.Tensor) -> None:
        self.embeds = self.embeds[index]

    def reorder_beams(self, index: torch.Tensor) -> None:
        pass  # every row of an image attends to the same states; there is no cache to reorder


def _decoder(med: MED, image_embeds: torch.Tensor, prefix: list[int], rows_per_image: int,
             settings: GenerationSettings, use_cache: bool):
    if use_cache:
        return StaticCacheDecoder(med, image_embeds, prefix, rows_per_image, settings.max_length)
    return _RecomputeDecoder(med, image_embeds, rows_per_image)


def _penalize_repeats(scores: torch.Tensor, seqs: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' (and so BLIP's) repetition penalty over every token already in the row."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, seqs)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, seqs, seen)


def _forbid_eos(scores: torch.Tensor, cur_len: int, settings: GenerationSettings, eos: int) -> torch.Tensor:
    if cur_len < settings.min_length:
        scores = scores.clone()
        scores[:, eos] = float("-inf")
    return scores


# ---- nucleus sampling ---------------------------------------------------------------------------
def _kept_mass(logits: torch.Tensor, settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' sampling warpers in their order: temperature, top-k, renormalise, top-p.

    (A, V) logits -> (sorted probabilities with the cut tokens zeroed (A, V), their token ids).
    Float64, sorted descending. Top-k keeps every token tied with the k-th, and top-p keeps a
    token while the (top-k renormalised) mass strictly ahead of it is below top_p, at least one
    token: TopKLogitsWarper's and TopPLogitsWarper's rules.
    """
    probs = torch.softmax(logits.double() / settings.temperature, dim=-1)
    sorted_p, order = _sorted_candidates(probs, settings.top_k)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if 0 < settings.top_k < sorted_p.shape[-1]:
        keep = sorted_p >= sorted_p[:, settings.top_k - 1 : settings.top_k]
    if settings.top_p < 1.0:
        renormed = sorted_p * keep
        renormed = renormed / renormed.sum(dim=-1, keepdim=True)
        before = renormed.cumsum(dim=-1) - renormed  # mass strictly ahead of each token
        keep = keep & (before < settings.top_p)
        keep[:, 0] = True
    return sorted_p * keep, order


def _sorted_candidates(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """probs sorted descending (stable: ties by token id), with their ids: all V columns, or with
    top-k on only the first m, m = the most tokens any row has at or above its k-th probability
    (k, unless a token ties with some row's k-th).
    The columns left out are ones top-k zeroes, so every result downstream is the same; sorting
    30 524 float64s per row at every decode step was ~5 % of a caption's time at BLIP-base."""
    vocab = probs.shape[-1]
    if not 0 < top_k < vocab:
        return probs.sort(dim=-1, descending=True, stable=True)
    values, ids = probs.topk(top_k + 1, dim=-1)
    if bool((values[:, top_k] == values[:, top_k - 1]).any()):  # a tie with some row's k-th: widen
        m = int((probs >= values[:, top_k - 1 : top_k]).sum(dim=-1).max())
        ids = probs.topk(m, dim=-1).indices
    else:
        ids = ids[:, :top_k]
    ids = ids.sort(dim=-1).values  # the candidates, by token id
    values, within = probs.gather(1, ids).sort(dim=-1, descending=True, stable=True)
    return values, ids.gather(1, within)


def sampling_distribution(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """(A, V) processed logits -> (A, V) the distribution a nucleus draw samples from."""
    mass, order = _kept_mass(logits, settings)
    out = mass.new_zeros(logits.shape).scatter(1, order, mass)
    return out / out.sum(dim=-1, keepdim=True)


def _nucleus_pick(logits: torch.Tensor, uniforms: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """Inverse-CDF draw from the top-k, then top-p set, one uniform per row: (A, V), (A,) -> (A,).

    Each row uses only its own logits and uniform, so a draw cannot depend on other rows. Float64
    makes a boundary case (u landing within rounding of a CDF step) vanishingly rare.
    """
    mass, order = _kept_mass(logits, settings)
    cdf = mass.cumsum(dim=-1)
    target = uniforms.to(cdf.device).unsqueeze(1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=mass.shape[-1] - 1)
    return order.gather(1, pos).squeeze(1)


def _nucleus(
    med: MED, image_embeds: torch.Tensor, prefix: list[int], seeds: list[int],
    settings: GenerationSettings, use_cache: bool,
) -> list[list[list[int]]]:
    k = settings.num_captions
    batch, device = image_embeds.shape[0], image_embeds.device
    rows = batch * k  # row r = image r // k, caption r % k
    steps = settings.max_length - len(prefix)
    uniforms = torch.stack([
        torch.rand(steps, generator=torch.Generator().manual_seed(row_seed(seeds[r // k], r % k)), dtype=torch.float64)
        for r in range(rows)
    ]).to(device)  # (R, steps), drawn up front on the CPU: the same on every device
    eos, pad = med.config.tokens.sep, med.config.tokens.pad
    seqs = torch.full((rows, settings.max_length), pad, dtype=torch.long, device=device)
    seqs[:, : len(prefix)] = torch.tensor(prefix, device=device)
    lengths = torch.full((rows,), settings.max_length, dtype=torch.long)
    live = torch.arange(rows, device=device)  # rows still writing, in order
    decoder = _decoder(med, image_embeds, prefix, k, settings, use_cache)

    for step, cur_len in enumerate(range(len(prefix), settings.max_length)):
        logits = decoder.next_logits(seqs[live], cur_len, first=step == 0)
        logits = _penalize_repeats(logits, seqs[live, :cur_len], settings.penalty)
        logits = _forbid_eos(logits, cur_len, settings, eos)
        picks = _nucleus_pick(logits, uniforms[live, step], settings)
        seqs[live, cur_len] = picks
        done = picks == eos
        if done.any():
            lengths[live[done].cpu()] = cur_len + 1
            keep = (~done).nonzero().squeeze(1)
            live = live[keep]
            if live.numel() == 0:
                break
            decoder.keep_rows(keep)
    out = seqs.cpu().tolist()
    return [[out[b * k + j][: lengths[b * k + j]] for j in range(k)] for b in range(batch)]


# ---- beam search --------------------------------------------------------------------------------
def beam_search(
    med: MED, image_embeds: torch.Tensor, prefix: list[int], seeds: list[int],
    settings: GenerationSettings, use_cache: bool,
) -> list[list[list[int]]]:
    """transformers' beam search as BLIP ran it (early_stopping=False), per image independently.

    Hypotheses are scored by sum of log-probs / length**length_penalty, the length counting the
    prefix and not the [SEP]; the K best come back. Public: VQA's answer generation
    (model/tasks/vqa.py) decodes question states with it, not image embeddings.
    """
    nb = settings.num_beams
    batch, device = image_embeds.shape[0], image_embeds.device
    eos, pad = med.config.tokens.sep, med.config.tokens.pad
    seqs = torch.full((batch * nb, settings.max_length), pad, dtype=torch.long, device=device)
    seqs[:, : len(prefix)] = torch.tensor(prefix, device=device)
    # Only beam 0 is live at first, so that the first step does not pick nb copies of one token.
    beam_scores = torch.full((batch, nb), -1e9, device=device)
    beam_scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    decoder = _decoder(med, image_embeds, prefix, nb, settings, use_cache)
    base = torch.arange(batch, device=device).unsqueeze(1) * nb  # (B, 1) first row of each image

    def score(sum_logprobs: float, length: int) -> float:
        return sum_logprobs / (length ** settings.length_penalty)

    for step, cur_len in enumerate(range(len(prefix), settings.max_length)):
        logits = decoder.next_logits(seqs, cur_len, first=step == 0)
        logprobs = torch.log_softmax(logits, dim=-1)
        logprobs = _penalize_repeats(logprobs, seqs[:, :cur_len], settings.penalty)
        logprobs = _forbid_eos(logprobs, cur_len, settings, eos)
        vocab = logprobs.shape[-1]
        total = (beam_scores.view(-1, 1) + logprobs).view(batch, nb * vocab)
        top_scores, top_idx = total.topk(2 * nb, dim=1)  # (B, 2nb), best first
        top_beam, top_token = (top_idx // vocab).tolist(), (top_idx % vocab).tolist()
        top_scores_l = top_scores.tolist()
        next_beam = [[j for j in range(nb)] for _ in range(batch)]
        next_token = [[pad] * nb for _ in range(batch)]
        next_score = [[0.0] * nb for _ in range(batch)]
        seqs_cpu = None
        for b in range(batch):
            if done[b]:
                continue
            filled = 0
            for rank in range(2 * nb):
                beam, token, s = top_beam[b][rank], top_token[b][rank], top_scores_l[b][rank]
                if token == eos:
                    if rank < nb:  # as transformers: an [SEP] outside the top nb is not kept
                        if seqs_cpu is None:
                            seqs_cpu = seqs[:, :cur_len].cpu().tolist()
                        finished[b].append((score(s, cur_len), seqs_cpu[b * nb + beam] + [eos]))
                    continue
                next_beam[b][filled], next_token[b][filled], next_score[b][filled] = beam, token, s
                filled += 1
                if filled == nb:
                    break
            # Done once nb hypotheses are in and no live beam can beat the worst of them.
            if len(finished[b]) >= nb:
                worst = sorted(h[0] for h in finished[b])[-nb]
                done[b] = worst >= score(max(next_score[b]), cur_len)
        index = (base + torch.tensor(next_beam, device=device)).view(-1)
        seqs = seqs[index]
        seqs[:, cur_len] = torch.tensor(next_token, device=device).view(-1)
        beam_scores = torch.tensor(next_score, device=device)
        if all(done):
            break
        decoder.reorder_beams(index)
    final = seqs.cpu().tolist()
    scores_l = beam_scores.tolist()
    out = []
    for b in range(batch):
        hyps = list(finished[b])
        if not done[b]:  # ran out of length: the live beams count as hypotheses
            hyps += [(score(scores_l[b][j], settings.max_length), final[b * nb + j]) for j in range(nb)]
        hyps.sort(key=lambda h: h[0], reverse=True)
        out.append([seq for _, seq in hyps[: settings.num_captions]])
    return out
