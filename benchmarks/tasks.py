"""BLIP's seven downstream tasks on the toy world, for a model pre-trained on the web as is and one
pre-trained on the bootstrapped web, with the same budget, both from the warmed-up ViT.

    python benchmarks/tasks.py --output tasks.json [--seeds 0] [--vision-steps 5000 \
        --pretrain-steps 600 --finetune-steps 300 --task-steps 300 ...]

Per seed: a world with its task files; a tokenizer that knows the captions and the tasks' words;
`capfilt model init` + `model pretrain-vision` (the toy world's stand-in for ImageNet weights);
the raw web fetched from the served world. A model pre-trained on human + raw web gives the
captioner and the filter (fine-tuned on human), which bootstrap the web (CapFilt, nucleus). Then
two pre-trainings with the same budget, on human + the raw web and on human + the bootstrapped
web, and for each the seven tasks, each fine-tuned (same steps) and evaluated on `test` as the
field does it:

    retrieval        finetune retrieval, TR@1 / IR@1
    captioning       finetune caption, BLEU-4, METEOR, ROUGE-L, CIDEr
    VQA              finetune vqa, VQA accuracy (rank inference)
    NLVR2            finetune nlvr2, accuracy
    visual dialog    finetune dialog, MRR and R@1
    text-video       zero-shot with the retrieval model: t2v R@1, median rank
    video QA         zero-shot with the VQA model: accuracy

Writes JSON (machine stated) and a Markdown table. A benchmark, not a test; the budget is flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (task, metric, label) in table order
ROWS = [
    ("retrieval", "tr@1", "retrieval TR@1"), ("retrieval", "ir@1", "retrieval IR@1"),
    ("caption", "bleu4", "captioning BLEU-4"), ("caption", "meteor", "captioning METEOR"),
    ("caption", "rouge_l", "captioning ROUGE-L"), ("caption", "cider", "captioning CIDEr"),
    ("vqa", "accuracy", "VQA accuracy"), ("nlvr2", "accuracy", "NLVR2 accuracy"),
    ("dialog", "mrr", "dialog MRR"), ("dialog", "r@1", "dialog R@1"),
    ("video_retrieval", "t2v_r@1", "text-video R@1 (zero-shot)"),
    ("video_retrieval", "t2v_median_rank", "text-video median rank (zero-shot)"),
    ("video_qa", "accuracy", "video QA accuracy (zero-shot)"),
]
DATASETS = {"web": "web as is", "bootstrapped": "bootstrapped web (CapFilt)"}


def task_tokenizer(world, out: Path) -> Path:
    """A WordPiece vocabulary over the captions and every task text (questions, answers,
    statements, dialog candidates), so that no task's words fall to [UNK]."""
    import pyarrow.parquet as pq

    from model.tokenizer import train_wordpiece

    texts: list[str] = []
    for split in ("human", "web"):
        for r in pq.read_table(world.path(split)).to_pylist():
            texts += [c for c in (r.get("captions") or [r.get("caption")]) if c]
    tasks = world.root / "tasks"
    for r in pq.read_table(tasks / "vqa.parquet").to_pylist():
        texts += [r["question"], *r["answers"]]
    texts += [r["statement"] for r in pq.read_table(tasks / "nlvr2.parquet").to_pylist()]
    for r in pq.read_table(tasks / "dialog.parquet").to_pylist():
        texts += [r["caption"]] + [t for x in r["rounds"] for t in (x["question"], *x["candidates"])]
    for r in pq.read_table(tasks / "clips_qa.parquet").to_pylist():
        texts += [r["question"], *r["answers"]]
    train_wordpiece(texts, vocab_size=1024).save(out)
    return out


def one_seed(args, world, urls: Path, work: Path, seed: int, log) -> dict[str, Any]:
    from capfilt.cli import main as capfilt
    from pipelines.bootstrap.run import run_bootstrap
    from pipelines.bootstrap.settings import BootstrapSettings
    from pipelines.train.evaluate import evaluate
    from pipelines.train.job import run_training
    from pipelines.train.settings import EvaluateSettings, TrainSettings
    from pipelines.train.tasks.job import run_task_training
    from pipelines.train.tasks.settings import TaskFinetuneSettings

    human, test, tasks = str(world.path("human")), str(world.path("test")), world.root / "tasks"
    common = dict(batch_size=args.batch_size, seed=seed, epochs=1000, log_every=50, checkpoint_every=100_000,
                  keep_checkpoints=1, max_failures=0)
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        log(f"seed {seed}: {name} {timings[name]:.0f} s")
        return value

    def init_model() -> Path:
        tokenizer = task_tokenizer(world, work / "tokenizer")
        assert capfilt(["model", "init", "--preset", "tiny", "--tokenizer", str(tokenizer), "--seed", str(seed),
                        "--output", str(work / "init"), "--overwrite"]) == 0
        assert capfilt(["model", "pretrain-vision", str(work / "init"), "--output", str(work / "vision"),
                        "--steps", str(args.vision_steps), "--seed", str(seed),
                        "--eval-every", str(max(1, args.vision_steps))]) == 0
        return work / "vision"

    def boot(out: Path, captioner: Path | None, filter_: Path | None, **changes) -> Path:
        values = dict(input=str(urls), output=out, captioner=captioner, filter=filter_, key_col="key",
                      allow_private_hosts=True, timeout=2.0, image_size=64, shard_size=250, batch_size=32,
                      min_length=5, max_length=20, seed=seed, threshold=args.threshold, resume=out.exists())
        run_bootstrap(BootstrapSettings(**{**values, **changes}), verbose=False)
        return out

    def pretrain(name: str, web: Path, init: Path) -> Path:
        return Path(run_training(TrainSettings(task="pretrain", data=[human, str(web)], output=work / name / "pretrain",
                                               init=init, max_steps=args.pretrain_steps,
                                               warmup_steps=max(1, args.pretrain_steps // 10), lr=args.lr,
                                               **common))["model"])

    def finetune(task: str, init: Path, out: Path, steps: int) -> Path:
        smoothing = dict(label_smoothing=0.0) if task == "caption" else {}  # as toy_quality.py, see the README
        lr = args.lr if task == "caption" else args.lr / 2
        return Path(run_training(TrainSettings(task=task, data=[human], output=out, init=init, max_steps=steps,
                                               lr=lr, warmup_steps=max(1, steps // 10), **smoothing, **common))["model"])

    def finetune_task(task: str, init: Path, out: Path) -> Path:
        return Path(run_task_training(TaskFinetuneSettings(
            task=task, data=[str(tasks / f"{task}.parquet")], output=out, init=init, max_steps=args.task_steps,
            lr=args.lr, warmup_steps=max(1, args.task_steps // 10), batch_size=args.task_batch_size, seed=seed,
            epochs=1000, log_every=50, checkpoint_every=100_000, keep_checkpoints=1, max_failures=0))["model"])

    def score(checkpoint: Path, task: str, data: list[Path], **knobs) -> dict[str, Any]:
        return evaluate(EvaluateSettings(checkpoint=checkpoint, data=[str(d) for d in data], tasks=[task],
                                         max_images=args.eval_items, seed=seed, **knobs))[task]

    def seven(name: str, model: Path) -> dict[str, Any]:
        out, here = {}, work / name
        retrieval = timed(f"{name}_retrieval", lambda: finetune("filter", model, here / "retrieval", args.task_steps))
        out["retrieval"] = score(retrieval, "retrieval", [Path(test)])
        out["video_retrieval"] = score(retrieval, "video_retrieval", [tasks / "clips.parquet"], frames=args.frames)
        captioner = timed(f"{name}_caption", lambda: finetune("caption", model, here / "caption", args.task_steps))
        out["caption"] = score(captioner, "caption", [Path(test)], max_length=20, min_length=3)
        vqa = timed(f"{name}_vqa", lambda: finetune_task("vqa", model, here / "vqa"))
        out["vqa"] = score(vqa, "vqa", [tasks / "vqa.parquet"], k_answers=args.k_answers)
        out["video_qa"] = score(vqa, "video_qa", [tasks / "clips_qa.parquet", tasks / "clips.parquet"],
                                frames=args.frames, k_answers=args.k_answers)
        nlvr2 = timed(f"{name}_nlvr2", lambda: finetune_task("nlvr2", model, here / "nlvr2"))
        out["nlvr2"] = score(nlvr2, "nlvr2", [tasks / "nlvr2.parquet"])
        dialog = timed(f"{name}_dialog", lambda: finetune_task("dialog", model, here / "dialog"))
        out["dialog"] = score(dialog, "dialog", [tasks / "dialog.parquet"])
        for metrics in out.values():
            metrics.pop("examples", None)
        return out

    vision = timed("vision_warmup", init_model)
    raw = timed("fetch", lambda: boot(work / "raw", None, None, download_only=True))
    base = timed("pretrain_base", lambda: pretrain("base", raw, vision))
    captioner = timed("finetune_captioner", lambda: finetune("caption", base, work / "captioner", args.finetune_steps))
    filter_ = timed("finetune_filter", lambda: finetune("filter", base, work / "filter", args.finetune_steps))
    boot_dir = timed("bootstrap", lambda: boot(work / "boot", captioner, filter_, input=str(raw), key_col=None,
                                                 num_captions=1, decoding="nucleus", top_p=args.top_p))
    results = {}
    for name, web in (("web", raw), ("bootstrapped", boot_dir)):
        model = timed(f"pretrain_{name}", lambda: pretrain(name, web, vision))
        results[name] = seven(name, model)
    return {"seed": seed, "results": results, "seconds": timings}


def markdown(per_seed: list[dict[str, Any]], budget: dict[str, Any]) -> str:
    lines = [f"Seven tasks, tiny model, toy world; seeds {[s['seed'] for s in per_seed]} "
             f"(values per seed, ' / ' between seeds). Budget: {json.dumps(budget)}", "",
             "| task, metric | " + " | ".join(DATASETS.values()) + " |", "|---|" + "---|" * len(DATASETS)]
    for task, metric, label in ROWS:
        cells = [" / ".join(f"{s['results'][d][task][metric]:.3f}" for s in per_seed) for d in DATASETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("tasks.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="Table file (default: OUTPUT with .md).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for every artefact (default: temporary).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--web-size", type=int, default=600)
    parser.add_argument("--human-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--nlvr2-pairs", type=int, default=1500)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--vision-steps", type=int, default=5000)
    parser.add_argument("--pretrain-steps", type=int, default=600, help="The budget: the same for both datasets.")
    parser.add_argument("--finetune-steps", type=int, default=300, help="Captioner and filter fine-tunes for CapFilt.")
    parser.add_argument("--task-steps", type=int, default=300, help="Each downstream fine-tune.")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--task-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--k-answers", type=int, default=32)
    parser.add_argument("--eval-items", type=int, default=None, help="Evaluate on the first N items of each split.")
    args = parser.parse_args(argv)

    import tempfile

    import ray

    from capfilt.world import World, WorldMakeSettings, WorldServer, make_world

    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capfilt-tasks-") as tmp:
        work = args.work or Path(tmp)
        per_seed = []
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 3), include_dashboard=False, log_to_driver=False)
        try:
            for seed in args.seeds:
                world_dir = work / f"seed{seed}" / "world"
                if not (world_dir / "manifest.json").is_file():
                    # val_size > 0: the world deals NLVR2 pairs to the splits in turn, alternating labels
                    make_world(WorldMakeSettings(out=world_dir, size=args.web_size, human_size=args.human_size,
                                                 human_captions=3, val_size=max(1, args.test_size // 2),
                                                 test_size=args.test_size, nlvr2_pairs=args.nlvr2_pairs,
                                                 clips=args.clips, seed=seed, overwrite=True))
                world = World.load(world_dir)
                with WorldServer(world.root, port=0, slow_seconds=6) as server:
                    urls = world.write_urls(work / f"seed{seed}" / "web.parquet", server.base_url)
                    per_seed.append(one_seed(args, world, urls, work / f"seed{seed}" / f"run-{server.port}", seed,
                                             lambda m: print(m, flush=True)))
                args.output.write_text(json.dumps({"per_seed": per_seed}, indent=2) + "\n")
        finally:
            ray.shutdown()
    budget = {k: getattr(args, k) for k in ("vision_steps", "pretrain_steps", "finetune_steps", "task_steps",
                                             "batch_size", "task_batch_size", "lr", "web_size", "human_size",
                                             "test_size", "frames", "k_answers", "eval_items")}
    result = {"benchmark": "tasks", "seeds": args.seeds, "budget": budget,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average_1m_at_start": load},
              "wall_seconds": round(time.perf_counter() - started, 1), "per_seed": per_seed}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(per_seed, budget)
    (args.markdown or args.output.with_suffix(".md")).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
