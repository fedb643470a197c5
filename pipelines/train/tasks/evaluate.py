"""Evaluation of the downstream tasks on a split, the metrics the field reports:

  vqa              VQA accuracy (model/tasks/vqa.py), answers generated or ranked from a list
  nlvr2            accuracy
  dialog           MRR, R@1/5/10 and mean rank of the true answer among each round's candidates
  video_retrieval  zero-shot, the retrieval model: text->video and video->text R@1/5/10, median rank
  video_qa         zero-shot, the VQA model over uniformly sampled frames: VQA accuracy

Plain functions over a loaded model and checked rows; `evaluate_task` loads and dispatches.
The answer list of rank inference is every answer the data file lists, all splits (BLIP ranks
a fixed list of the training set's frequent answers).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from model.tasks.dialog import context_embeds, dialog_logits
from model.tasks.nlvr import NLVRHead, nlvr_logits
from model.tasks.ranking import rank_metrics, rank_of
from model.tasks.video import uniform_frames, video_embeds
from model.tasks.vqa import generate_answers, question_states, rank_answers, vqa_accuracy
from pipelines.train.tasks.batches import dialog_batch, nlvr_batch, pixels

EXAMPLES = 5


def answer_list(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({a for r in rows for a in r["answers"]})


@torch.inference_mode()
def answer_questions(med, tokenizer, image_embeds: torch.Tensor, questions: Sequence[str], *, inference: str,
                     answers: Sequence[str], k: int, max_len: int) -> list[str]:
    """One answer per question, each question against its row of image_embeds."""
    q_ids, q_mask = tokenizer.encode(list(questions), max_len)
    states = question_states(med, image_embeds, q_ids, q_mask)
    if inference == "generate":
        return generate_answers(med, tokenizer, states)
    a_ids, a_mask = tokenizer.encode(list(answers), max_len)
    picked = rank_answers(med, states, q_mask, a_ids, a_mask, k)
    return [answers[int(i)] for i in picked]


def _vqa_like(med, tokenizer, rows, images_of, *, inference: str, k: int, batch_size: int, answers: Sequence[str]
              ) -> dict[str, Any]:
    max_len = med.config.max_text_len
    predictions: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        predictions += answer_questions(med, tokenizer, images_of(chunk), [r["question"] for r in chunk],
                                        inference=inference, answers=answers, k=k, max_len=max_len)
    scores = [vqa_accuracy(p, r["answers"]) for p, r in zip(predictions, rows)]
    return {"accuracy": sum(scores) / len(scores), "questions": len(rows), "inference": inference,
            **({"k": k, "answer_list": len(answers)} if inference == "rank" else {}),
            "examples": [{"question": r["question"], "answer": p, "answers": r["answers"]}
                         for p, r in list(zip(predictions, rows))[:EXAMPLES]]}


@torch.inference_mode()
def evaluate_vqa(med, tokenizer, rows, *, inference: str = "rank", k: int = 128, batch_size: int = 32,
                 answers: Sequence[str] | None = None) -> dict[str, Any]:
    med.eval()
    return _vqa_like(med, tokenizer, rows, lambda chunk: med.encode_image(pixels([r["image"] for r in chunk], med.config)),
                     inference=inference, k=k, batch_size=batch_size, answers=answers or answer_list(rows))


def frame_pixels(rows, n_frames: int, config) -> torch.Tensor:
    """(B, F, 3, S, S): n_frames uniformly sampled frames of each row's clip."""
    out = []
    for r in rows:
        picked = [r["frames"][i] for i in uniform_frames(len(r["frames"]), n_frames)]
        out.append(pixels(picked, config))
    if len({t.shape[0] for t in out}) > 1:
        raise ValueError(f"clips of a batch have different frame counts under {n_frames}; give --frames at most the shortest clip's")
    return torch.stack(out)


@torch.inference_mode()
def evaluate_video_qa(med, tokenizer, rows, *, frames: int = 8, inference: str = "rank", k: int = 128,
                      batch_size: int = 8, answers: Sequence[str] | None = None) -> dict[str, Any]:
    med.eval()

    def images_of(chunk):
        return video_embeds(med, frame_pixels(chunk, frames, med.config))[1]

    out = _vqa_like(med, tokenizer, rows, images_of, inference=inference, k=k, batch_size=batch_size,
                    answers=answers or answer_list(rows))
    return {**out, "frames": frames}


@torch.inference_mode()
def evaluate_nlvr2(med, head: NLVRHead, tokenizer, rows, *, batch_size: int = 32) -> dict[str, Any]:
    med.eval()
    head.eval()
    correct = 0
    for start in range(0, len(rows), batch_size):
        b = nlvr_batch(rows[start : start + batch_size], tokenizer, med.config, med.config.max_text_len)
        embeds = med.encode_image(torch.cat([b["pixel_left"], b["pixel_right"]]))
        left, right = embeds.split(b["ids"].shape[0])
        logits = nlvr_logits(med, head, b["ids"], b["mask"], left, right)
        correct += int((logits.argmax(1) == b["labels"]).sum())
    return {"accuracy": correct / len(rows), "pairs": len(rows),
            "true_share": sum(r["label"] for r in rows) / len(rows)}


@torch.inference_mode()
def evaluate_dialog(med, tokenizer, rounds, *, batch_size: int = 16) -> dict[str, Any]:
    """rounds: data.dialog_rounds(...) examples; each candidate scored by ITM's P(true)."""
    med.eval()
    ranks = []
    for start in range(0, len(rounds), batch_size):
        chunk = rounds[start : start + batch_size]
        b = dialog_batch(chunk, tokenizer, med.config, med.config.max_text_len, 0, None)
        context, mask = context_embeds(med, med.encode_image(b["pixel_values"]), b["c_ids"], b["c_mask"])
        probs = dialog_logits(med, b["ids"], b["mask"], context[b["owner"]], mask[b["owner"]]).softmax(-1)[:, 1]
        offset = 0
        for r in chunk:
            n = len(r["candidates"])
            ranks.append(rank_of(probs[offset : offset + n], r["answer_index"]))
            offset += n
    candidates = sorted({len(r["candidates"]) for r in rounds})
    return {**rank_metrics(ranks), "rounds": len(rounds), "candidates": candidates}


@torch.inference_mode()
def evaluate_video_retrieval(med, tokenizer, clips, *, frames: int = 8, k_test: int = 16, batch_size: int = 8
                             ) -> dict[str, Any]:
    """Text->video: every caption of every clip against every clip; video->text likewise. Score =
    ITM matched logit + ITC similarity on each row's ITC top k, as retrieval on images."""
    med.eval()
    feats, embeds = [], []
    for start in range(0, len(clips), batch_size):
        f, e = video_embeds(med, frame_pixels(clips[start : start + batch_size], frames, med.config))
        feats.append(f)
        embeds.append(e)
    video_feat, video_tokens = torch.cat(feats), torch.cat(embeds)
    texts = [c for clip in clips for c in clip["captions"]]
    owner = [i for i, clip in enumerate(clips) for _ in clip["captions"]]
    ids, mask = tokenizer.encode(texts, med.config.max_text_len)
    text_feat = torch.cat([med.text_feature(med.encode_text(ids[s : s + 64], mask[s : s + 64]))
                           for s in range(0, len(texts), 64)])
    sim = text_feat @ video_feat.t()  # (T, V)

    def rerank(rows: torch.Tensor, text_major: bool) -> torch.Tensor:
        # outside the top k: below every re-ranked candidate, in ITC order (so that a rank past
        # k is a rank, not a tie among -inf)
        scores = rows - 1e4
        kk = min(k_test, rows.shape[1])
        top_sim, top = rows.topk(kk, dim=1)
        r = torch.arange(rows.shape[0]).repeat_interleave(kk)
        c = top.flatten()
        t_idx, v_idx = (r, c) if text_major else (c, r)
        logits = torch.cat([med.itm_logits(ids[t_idx[s : s + 64]], mask[t_idx[s : s + 64]],
                                           video_tokens[v_idx[s : s + 64]])[:, 1] for s in range(0, len(r), 64)])
        scores[r, c] = logits + top_sim.flatten()
        return scores

    t2v, v2t = rerank(sim, True), rerank(sim.t().contiguous(), False)
    t2v_ranks = [rank_of(t2v[t], owner[t]) for t in range(len(texts))]
    v2t_ranks = [rank_of(v2t[v], [t for t, o in enumerate(owner) if o == v]) for v in range(len(clips))]
    return {**rank_metrics(t2v_ranks, prefix="t2v_"), **rank_metrics(v2t_ranks, prefix="v2t_"),
            "clips": len(clips), "texts": len(texts), "frames": frames, "k_test": k_test}


def evaluate_task(settings) -> dict[str, Any]:
    """`capfilt evaluate --tasks TASK` for a downstream task: the checkpoint of the kind the task
    takes (model/tasks/checkpoint.py ACCEPTS), the split's checked rows, the task's metrics."""
    from model.tasks.checkpoint import load_for, load_head
    from pipelines.train.tasks.data import dialog_rounds, read_task, video_qa_rows

    task = settings.tasks[0]
    checkpoint = load_for(settings.checkpoint, f"evaluate:{task}")
    med, tokenizer = checkpoint.med, checkpoint.tokenizer
    limit = settings.max_images
    torch.manual_seed(settings.seed)
    if task == "vqa":
        rows = read_task("vqa", settings.data, settings.split, limit)
        answers = answer_list(read_task("vqa", settings.data, None))
        metrics = evaluate_vqa(med, tokenizer, rows, inference=settings.inference, k=settings.k_answers,
                               batch_size=settings.batch_size, answers=answers)
    elif task == "nlvr2":
        head = NLVRHead(med)
        load_head(checkpoint, head)
        metrics = evaluate_nlvr2(med, head, tokenizer, read_task("nlvr2", settings.data, settings.split, limit),
                                 batch_size=settings.batch_size)
    elif task == "dialog":
        rounds = dialog_rounds(read_task("dialog", settings.data, settings.split, limit))
        metrics = evaluate_dialog(med, tokenizer, rounds, batch_size=settings.batch_size)
    elif task == "video_retrieval":
        clips = read_task("clips", settings.data, settings.split, limit)
        metrics = evaluate_video_retrieval(med, tokenizer, clips, frames=settings.frames, k_test=settings.k_test,
                                           batch_size=max(1, settings.batch_size // settings.frames))
    else:
        rows = video_qa_rows(settings.data, settings.split, limit)
        answers = answer_list(video_qa_rows(settings.data, None))
        metrics = evaluate_video_qa(med, tokenizer, rows, frames=settings.frames, inference=settings.inference,
                                    k=settings.k_answers, batch_size=max(1, settings.batch_size // settings.frames),
                                    answers=answers)
    return {"checkpoint": str(settings.checkpoint), "sha256": checkpoint.sha256, "data": settings.data,
            "split": settings.split, task: metrics}
