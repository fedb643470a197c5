"""Toy-world quality: warm the tiny MED's ViT up on labelled pictures (`capfilt model
pretrain-vision`, the stand-in for BLIP's ImageNet start), pre-train it on human + web pairs,
fine-tune the captioner and the filter on human pairs, and measure what CapFilt needs of them.
A benchmark, not a test.

    python benchmarks/toy_quality.py --output toy_quality.json [--world DIR] \
        [--vision-steps 5000 --pretrain-steps 400 --caption-steps 1200 --filter-steps 600]

Writes JSON with:
  - zero-shot retrieval of the pre-trained model on `test`: TR@1/5/10, IR@1/5/10;
  - the captioner on `test`: BLEU-4 and CIDEr (beam), and the share of its nucleus-sampled (and
    of its greedy) captions that the world's checker finds true, and the share it cannot parse;
    on one-object scenes, how often each attribute it names (size, colour, shape, place) is right;
  - the filter's ROC-AUC (ITM probability) for clean vs noisy web captions: overall, against
    other-image and junk captions, and against one-attribute-wrong captions alone;
  - the budget: steps, wall seconds of each stage, cores.
Goals from the issue: filter AUC >= 0.98 (other-image, junk) and >= 0.90 (one attribute wrong);
>= 75 % of nucleus captions true.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def roc_auc(positive: list[float], negative: list[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney)."""
    if not positive or not negative:
        return None
    ranked = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += average * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def web_pairs(world, path: Path, limit: int | None) -> tuple[Path, list[dict]]:
    """Web rows whose image the world serves (fetch ok) and whose caption is not empty, as a
    Parquet of (key, absolute image path, caption); and their labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = world.web_labels
    rows = [r for r in world.table("web").to_pylist() if r["caption"] and labels[r["key"]]["fetch"] == "ok"]
    rows = rows[:limit] if limit else rows
    table = {"key": [r["key"] for r in rows], "caption": [r["caption"] for r in rows],
             "image": [str(world.image_path(labels[r["key"]]["image_id"])) for r in rows]}
    pq.write_table(pa.table(table), path)
    return path, [{**labels[r["key"]], "caption": r["caption"]} for r in rows]


def filter_auc(checkpoint: Path, world, rows: list[dict], limit: int) -> dict:
    from model.checkpoint import load_checkpoint
    from model.scoring import score_captions
    from pipelines.train.evaluate import pixel_values

    ckpt = load_checkpoint(checkpoint)
    rows = rows[:limit]
    scores: list[float] = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        pixels = pixel_values([world.image_path(r["image_id"]).read_bytes() for r in chunk], ckpt.config)
        scores += [s[0] for s in score_captions(ckpt.med, ckpt.tokenizer, pixels, [[r["caption"]] for r in chunk]).itm]
    by_kind: dict[str, list[float]] = {}
    for r, s in zip(rows, scores):
        by_kind.setdefault(r["noise"], []).append(s)
    clean = by_kind.get("correct", [])
    noisy = [s for k, v in by_kind.items() if k != "correct" for s in v]
    return {
        "rows": len(rows), "counts": {k: len(v) for k, v in by_kind.items()},
        "auc_overall": roc_auc(clean, noisy),
        "auc_other_image_and_junk": roc_auc(clean, by_kind.get("other_image", []) + by_kind.get("junk", [])),
        "auc_other_image": roc_auc(clean, by_kind.get("other_image", [])),
        "auc_junk": roc_auc(clean, by_kind.get("junk", [])),
        "auc_wrong_attribute": roc_auc(clean, by_kind.get("wrong_attribute", [])),
        "mean_itm": {k: sum(v) / len(v) for k, v in by_kind.items()},
    }


def captioner_quality(checkpoint: Path, world, test: Path, images: int, seed: int) -> dict:
    from capfilt.world.attributes import attribute_accuracy
    from model.checkpoint import load_checkpoint
    from model.generation import row_seed
    from pipelines.train.evaluate import caption_metrics, generate, load_split, pixel_values
    from pipelines.train.settings import EvaluateSettings

    ckpt = load_checkpoint(checkpoint)
    split = load_split([str(test)], images)
    pixels = pixel_values(split.images, ckpt.config)
    seeds = [row_seed(seed, i) for i in range(len(split.keys))]
    out: dict = {"images": len(split.keys)}
    for decoding in ("beam", "greedy", "nucleus"):
        settings = EvaluateSettings(checkpoint=checkpoint, data=[str(test)], decoding=decoding,
                                    max_length=30, min_length=3, top_p=0.9)
        captions = generate(ckpt.med, ckpt.tokenizer, pixels, settings, seeds)
        checks = [world.check(key, c) for key, c in zip(split.keys, captions)]
        entry = {"true_share": sum(c.true for c in checks) / len(checks),
                 "unparsed_share": sum(not c.parsed for c in checks) / len(checks),
                 "one_object_attributes": attribute_accuracy([world.scene(k) for k in split.keys], captions),
                 "examples": [{"key": k, "caption": c, "true": r.true} for k, c, r in
                              list(zip(split.keys, captions, checks))[:5]]}
        if decoding == "beam":
            entry.update(caption_metrics(split.captions, captions))
        out[decoding] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("toy_quality.json"))
    parser.add_argument("--world", type=Path, default=None, help="A made world (else one is made here).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for checkpoints (else a temporary one).")
    parser.add_argument("--web-size", type=int, default=3000)
    parser.add_argument("--human-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--vision-steps", type=int, default=5000,
                        help="Steps of the ViT's warm-up on labelled pictures; 0: start the ViT from scratch.")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    # With a warmed-up ViT, 600 caption steps left 72 % of nucleus captions true and 300 filter
    # steps a one-attribute-wrong AUC of 0.88-0.91; twice as long met both goals (results/).
    parser.add_argument("--caption-steps", type=int, default=1200)
    parser.add_argument("--filter-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1),
                        help="Ray sets a worker's torch threads from its CPUs (default: every core to one worker).")
    # The tiny model learns from scratch: at 3e-4 its ITC/ITM sat at their prior through the whole
    # default budget; 1e-3 breaks the plateau (benchmarks/results/toy_quality_*.json).
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--caption-lr", type=float, default=1e-3)
    parser.add_argument("--filter-lr", type=float, default=5e-4)
    # BLIP's 0.1 leaves 0.9 on the right token, so nucleus sampling at top-p 0.9 sits on the edge
    # of a uniform tail of stray tokens: half the sampled captions fell outside the grammar.
    parser.add_argument("--caption-label-smoothing", type=float, default=0.0)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--filter-rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    from capfilt.commands.model import ModelInitSettings, init_model
    from capfilt.commands.pretrain_vision import PretrainVisionSettings, pretrain_vision
    from capfilt.world.store import World
    from pipelines.train.evaluate import evaluate
    from pipelines.train.job import run_training
    from pipelines.train.settings import EvaluateSettings, TrainSettings

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toy-quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        world_dir = args.world
        if world_dir is None:
            from capfilt.world.make import make_world
            from capfilt.world.settings import WorldMakeSettings

            t = time.perf_counter()
            world_dir = work / "world"
            make_world(WorldMakeSettings(out=world_dir, size=args.web_size, human_size=args.human_size,
                                         val_size=0, test_size=args.test_size, seed=args.seed, nlvr2_pairs=0,
                                         clips=0, vqa_per_image=0))
            timings["make_world_s"] = time.perf_counter() - t
        world = World.load(world_dir)
        web, web_rows = web_pairs(world, work / "web_pairs.parquet", None)
        human, test = world.path("human"), world.path("test")

        init = work / "init"
        if not (init / "config.json").is_file():
            init_model(ModelInitSettings(output=init, preset="tiny", seed=args.seed, overwrite=True))
        vision: dict = {}
        if args.vision_steps > 0:
            t = time.perf_counter()
            vision = pretrain_vision(PretrainVisionSettings(checkpoint=init, output=work / "init-vision",
                                                            steps=args.vision_steps, seed=args.seed, overwrite=True),
                                     log=lambda entry: print(json.dumps(entry), flush=True))
            timings["pretrain_vision_s"] = time.perf_counter() - t
            init = work / "init-vision"
        ray.init(num_cpus=int(max(os.cpu_count() or 1, args.num_workers * args.cpus_per_worker + 1)),
                 include_dashboard=False, log_to_driver=False)
        common = dict(num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
                      batch_size=args.batch_size, seed=args.seed,
                      log_every=20, checkpoint_every=100, keep_checkpoints=1, max_failures=0, epochs=1000)
        try:
            t = time.perf_counter()
            pre = run_training(TrainSettings(task="pretrain", data=[str(human), str(web)], output=work / "pretrain",
                                             init=init, max_steps=args.pretrain_steps, lr=args.pretrain_lr,
                                             warmup_steps=min(100, args.pretrain_steps // 10), **common))
            timings["pretrain_s"] = time.perf_counter() - t
            t = time.perf_counter()
            cap = run_training(TrainSettings(task="caption", data=[str(human)], output=work / "caption",
                                             init=Path(pre["model"]), max_steps=args.caption_steps, lr=args.caption_lr,
                                             label_smoothing=args.caption_label_smoothing,
                                             warmup_steps=20, **common))
            timings["caption_s"] = time.perf_counter() - t
            t = time.perf_counter()
            fil = run_training(TrainSettings(task="filter", data=[str(human)], output=work / "filter",
                                             init=Path(pre["model"]), max_steps=args.filter_steps, lr=args.filter_lr,
                                             warmup_steps=20, **common))
            timings["filter_s"] = time.perf_counter() - t
        finally:
            ray.shutdown()

        t = time.perf_counter()
        retrieval = evaluate(EvaluateSettings(checkpoint=Path(pre["model"]), data=[str(test)], tasks=["retrieval"],
                                              k_test=16, max_images=args.eval_images))["retrieval"]
        captioner = captioner_quality(Path(cap["model"]), world, test, args.eval_images, args.seed)
        filt = filter_auc(Path(fil["model"]), world, web_rows, args.filter_rows)
        timings["evaluate_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - started
    result = {
        "benchmark": "toy_quality",
        "budget": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "num_workers": args.num_workers,
                   "cpus_per_worker": args.cpus_per_worker, "batch_size": args.batch_size,
                   "lr": {"pretrain": args.pretrain_lr, "caption": args.caption_lr, "filter": args.filter_lr},
                   "caption_label_smoothing": args.caption_label_smoothing,
                   "vision_steps": args.vision_steps, "pretrain_steps": pre.get("step"),
                   "caption_steps": cap.get("step"), "filter_steps": fil.get("step"),
                   **{k: round(v, 1) for k, v in timings.items()}},
        "world": {"web_pairs": len(web_rows), "human_size": args.human_size, "test_size": args.test_size},
        "vision_pretraining_held_out": vision.get("final"),
        "zero_shot_retrieval_test": retrieval,
        "captioner_test": captioner,
        "filter_web": filt,
        "goals": {"filter_auc_other_image_and_junk>=0.98": (filt["auc_other_image_and_junk"] or 0) >= 0.98,
                  "filter_auc_wrong_attribute>=0.90": (filt["auc_wrong_attribute"] or 0) >= 0.90,
                  "nucleus_true_share>=0.75": captioner["nucleus"]["true_share"] >= 0.75},
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
