"""Evaluation of a checkpoint on a split: zero-shot retrieval and captioning; the downstream tasks
are handed to pipelines/train/tasks/evaluate.py.

Retrieval as BLIP's train_retrieval.py scores it: ITC similarity ranks every candidate, then the
top k are re-ranked by ITM logit (matched) + ITC similarity. TR@K: share of images with one of
their captions in the top K; IR@K: share of captions with their image in the top K.
Captioning: BLEU-4, METEOR, ROUGE-L and CIDEr from pycocoevalcap (its PTB tokenizer and METEOR
run on Java) against every reference caption of the image. SPICE is left out: pycocoevalcap
downloads Stanford CoreNLP for it on first use, and these machines have no network.

A split is small (val, test): it is read on the driver with pyarrow, without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.train.data import DataError, resolve_sources
from pipelines.train.pairs import decode_image, rows_to_pairs
from pipelines.train.settings import DOWNSTREAM_TASKS, EvaluateSettings

RECALL_AT = (1, 5, 10)


@dataclass
class Split:
    keys: list[str]  # one per image
    images: list[bytes]
    captions: list[list[str]]  # references per image

    @property
    def texts(self) -> tuple[list[str], list[int]]:
        """All captions, flat, and the image index of each."""
        texts = [c for caps in self.captions for c in caps]
        owner = [i for i, caps in enumerate(self.captions) for _ in caps]
        return texts, owner


def load_split(paths: Sequence[str], max_images: int | None = None) -> Split:
    sources = resolve_sources(paths)
    keys: list[str] = []
    images: list[bytes] = []
    captions: list[list[str]] = []
    index: dict[str, int] = {}
    for source in sources:
        if source.kind != "parquet":
            raise DataError(f"data: evaluation reads Parquet splits; {source.path} is WebDataset")
        for file in source.files:
            table = pq.read_table(file).to_pydict()
            n = len(next(iter(table.values()))) if table else 0
            batch = {k: _objects(v) for k, v in table.items()}
            batch["path"] = _objects([file] * n)
            pairs = rows_to_pairs(batch)
            for image, caption, key in zip(pairs["image"], pairs["caption"], pairs["image_key"]):
                if key not in index:
                    if max_images is not None and len(keys) >= max_images:
                        continue
                    index[key] = len(keys)
                    keys.append(key)
                    images.append(image)
                    captions.append([])
                captions[index[key]].append(caption)
    if not keys:
        raise DataError(f"data: no (image, caption) pairs in {', '.join(paths)}")
    return Split(keys, images, captions)


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def pixel_values(images: Sequence[bytes], config) -> torch.Tensor:
    from pipelines.train.augment import normalise

    arrays = []
    for data in images:
        array = decode_image(data, config.image_size)
        if array is None:
            raise DataError("data: an evaluation image cannot be decoded")
        arrays.append(array)
    return normalise(torch.from_numpy(np.stack(arrays)), config)


@torch.inference_mode()
def retrieval_scores(med, tokenizer, pixels: torch.Tensor, texts: list[str], k: int, batch_size: int = 64,
                     max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t (N_img, N_txt), t2i (N_txt, N_img)) score matrices: ITM + ITC on each row's top k, -inf elsewhere."""
    med.eval()
    max_length = max_length or med.config.max_text_len
    embeds, image_feat = [], []
    for start in range(0, pixels.shape[0], batch_size):
        e = med.encode_image(pixels[start : start + batch_size])
        embeds.append(e)
        image_feat.append(med.image_feature(e))
    image_embeds, image_feat = torch.cat(embeds), torch.cat(image_feat)
    ids, mask = tokenizer.encode(texts, max_length)
    text_feat = torch.cat([med.text_feature(med.encode_text(ids[s : s + batch_size], mask[s : s + batch_size]))
                           for s in range(0, len(texts), batch_size)])
    sim = image_feat @ text_feat.t()  # (N_img, N_txt)

    def rerank(sim_rows: torch.Tensor, image_major: bool) -> torch.Tensor:
        """ITM logit + ITC similarity on each row's top k; the pairs go through ITM in chunks."""
        scores = torch.full_like(sim_rows, float("-inf"))
        kk = min(k, sim_rows.shape[1])
        top_sim, top = sim_rows.topk(kk, dim=1)  # (R, kk)
        rows = torch.arange(sim_rows.shape[0]).repeat_interleave(kk)
        cols = top.flatten()
        image_index, text_index = (rows, cols) if image_major else (cols, rows)
        logits = torch.cat([
            med.itm_logits(ids[text_index[s : s + 256]], mask[text_index[s : s + 256]],
                           image_embeds[image_index[s : s + 256]])[:, 1]
            for s in range(0, len(rows), 256)
        ])
        scores[rows, cols] = logits + top_sim.flatten()
        return scores

    i2t = rerank(sim, image_major=True)
    t2i = rerank(sim.t(), image_major=False)
    return i2t, t2i


def recall_at(i2t: torch.Tensor, t2i: torch.Tensor, owner: list[int]) -> dict[str, float]:
    owner_t = torch.tensor(owner)
    out: dict[str, float] = {}
    # rank of the best-ranked ground-truth text of each image
    order = i2t.argsort(dim=1, descending=True)
    ranks_tr = []
    for image in range(i2t.shape[0]):
        positions = (owner_t[order[image]] == image).nonzero()
        ranks_tr.append(int(positions.min()) if len(positions) else i2t.shape[1])
    order_t = t2i.argsort(dim=1, descending=True)
    ranks_ir = [int((order_t[t] == owner[t]).nonzero().min()) for t in range(t2i.shape[0])]
    for k in RECALL_AT:
        out[f"tr@{k}"] = float(np.mean([r < k for r in ranks_tr]))
        out[f"ir@{k}"] = float(np.mean([r < k for r in ranks_ir]))
    out["tr_mean"] = float(np.mean([out[f"tr@{k}"] for k in RECALL_AT]))
    out["ir_mean"] = float(np.mean([out[f"ir@{k}"] for k in RECALL_AT]))
    return out


def generate(med, tokenizer, pixels: torch.Tensor, settings: EvaluateSettings, seeds: Sequence[int],
             batch_size: int = 32) -> list[str]:
    from model.generation import generate_captions

    gen = settings.generation
    out: list[str] = []
    for start in range(0, pixels.shape[0], batch_size):
        rows = generate_captions(med, tokenizer, pixels[start : start + batch_size],
                                 list(seeds[start : start + batch_size]), gen)
        out += [r[0] for r in rows]
    return out


def caption_metrics(references: list[list[str]], hypotheses: list[str]) -> dict[str, float]:
    """BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, PTB-tokenised) of one hypothesis per image."""
    import shutil

    if shutil.which("java") is None:
        raise RuntimeError("captioning metrics need Java (pycocoevalcap's PTB tokenizer runs on it): "
                           "install a JRE, e.g. `apt-get install openjdk-17-jre-headless`")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": h or "."}] for i, h in enumerate(hypotheses)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "meteor": float(meteor), "rouge_l": float(rouge), "cider": float(cider)}


def evaluate(settings: EvaluateSettings) -> dict:
    from model.tasks.checkpoint import load_for

    if settings.tasks[0] in DOWNSTREAM_TASKS:
        from pipelines.train.tasks.evaluate import evaluate_task

        result = evaluate_task(settings)
        _write(settings, result)
        return result
    checkpoint = load_for(settings.checkpoint, f"evaluate:{settings.tasks[0]}")
    for task in settings.tasks[1:]:
        from model.tasks.checkpoint import require_role

        require_role(checkpoint, f"evaluate:{task}")
    med, tokenizer = checkpoint.med, checkpoint.tokenizer
    split = load_split(settings.data, settings.max_images)
    pixels = pixel_values(split.images, med.config)
    result: dict = {"checkpoint": str(settings.checkpoint), "sha256": checkpoint.sha256, "data": settings.data,
                    "images": len(split.keys), "texts": sum(len(c) for c in split.captions)}
    torch.manual_seed(settings.seed)
    if "retrieval" in settings.tasks:
        texts, owner = split.texts
        if settings.pre_caption:
            from model.caption_text import pre_caption

            texts = [pre_caption(t, settings.caption_max_words) for t in texts]
        i2t, t2i = retrieval_scores(med, tokenizer, pixels, texts, settings.k_test, settings.batch_size)
        result["retrieval"] = {"k_test": settings.k_test, **recall_at(i2t, t2i, owner)}
    if "caption" in settings.tasks:
        from model.generation import row_seed

        seeds = [row_seed(settings.seed, i) for i in range(len(split.keys))]
        hypotheses = generate(med, tokenizer, pixels, settings, seeds, settings.batch_size)
        result["caption"] = {"decoding": settings.decoding, **caption_metrics(split.captions, hypotheses),
                             "examples": [{"key": k, "caption": h} for k, h in list(zip(split.keys, hypotheses))[:5]]}
    _write(settings, result)
    return result


def _write(settings: EvaluateSettings, result: dict) -> None:
    if settings.output is not None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        settings.output.write_text(json.dumps(result, indent=2) + "\n")
