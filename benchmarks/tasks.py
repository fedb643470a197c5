"""BLIP's seven downstream tasks on the toy world, for a model pre-trained on the web as is and one
pre-trained on the bootstrapped web, with the same budget, both from the warmed-up ViT.

    python benchmarks/tasks.py --output tasks.json [--seeds 0] [--vision-steps 2500 \
        --pretrain-steps 300 --finetune-steps 150 --task-steps 300 ...]

The models come from the CapFilt ablation's pipeline (benchmarks/capfilt_ablation.py, restricted to
its `web as is` and `web + both (nucleus)` pre-trainings; every flag of it applies here): per seed
a world with its task files, a tokenizer that knows the captions and the tasks' words, a ViT
warmed up on labelled pictures, the raw web fetched from the served world, a model pre-trained on
human + raw web whose fine-tunes on human caption and filter the web (CapFilt, nucleus), then the
two pre-trainings with the same budget. `capfilt_ablation.py --tasks-output FILE` runs the same
tasks beside the full ablation. For each model, the seven tasks, each fine-tuned (same steps)
and evaluated on `test` as the field does it:

    retrieval        finetune retrieval (the filter's recipe), TR@1 / IR@1
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
import sys
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
# which of the ablation's pre-trainings each column is
TASK_MODELS = {"web": "web", "bootstrapped": "web+both_nucleus"}


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nlvr2-pairs", type=int, default=1500)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--task-steps", type=int, default=300, help="Each downstream fine-tune.")
    parser.add_argument("--task-batch-size", type=int, default=16)
    parser.add_argument("--task-lr", type=float, default=1e-3, help="VQA, NLVR2 and dialog fine-tunes (retrieval "
                        "and captioning take the filter's and the captioner's).")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--k-answers", type=int, default=32)
    parser.add_argument("--eval-items", type=int, default=None, help="Evaluate on the first N items of each split.")


def task_budget(args) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("nlvr2_pairs", "clips", "task_steps", "task_batch_size", "task_lr",
                                         "frames", "k_answers", "eval_items")}


def seven(args, run, name: str, model: Path) -> dict[str, Any]:
    """The seven tasks for one pre-trained model: fine-tunes where the paper fine-tunes, then evaluation."""
    from pipelines.train.evaluate import evaluate
    from pipelines.train.settings import EvaluateSettings
    from pipelines.train.tasks.job import run_task_training
    from pipelines.train.tasks.settings import TaskFinetuneSettings

    test, tasks, here = run.world.path("test"), run.world.root / "tasks", run.work / "tasks" / name

    def finetune_task(task: str) -> Path:
        return Path(run_task_training(TaskFinetuneSettings(
            task=task, data=[str(tasks / f"{task}.parquet")], output=here / task, init=model, max_steps=args.task_steps,
            lr=args.task_lr, warmup_steps=max(1, args.task_steps // 10), batch_size=args.task_batch_size,
            seed=run.seed, epochs=1000, log_every=50, checkpoint_every=100_000, keep_checkpoints=1,
            max_failures=0))["model"])

    def score(checkpoint: Path, task: str, data: list[Path], **knobs) -> dict[str, Any]:
        return evaluate(EvaluateSettings(checkpoint=checkpoint, data=[str(d) for d in data], tasks=[task],
                                         max_images=args.eval_items, seed=run.seed, **knobs))[task]

    out: dict[str, Any] = {}
    retrieval = run.timed(f"{name}_retrieval", lambda: run.finetune("filter", model, here / "retrieval",
                                                                    steps=args.task_steps, lr=args.filter_lr))
    out["retrieval"] = score(retrieval, "retrieval", [test])
    out["video_retrieval"] = score(retrieval, "video_retrieval", [tasks / "clips.parquet"], frames=args.frames)
    captioner = run.timed(f"{name}_caption", lambda: run.finetune("caption", model, here / "caption",
                                                                  steps=args.task_steps, lr=args.caption_lr,
                                                                  label_smoothing=args.caption_label_smoothing))
    out["caption"] = score(captioner, "caption", [test], max_length=20, min_length=3)
    vqa = run.timed(f"{name}_vqa", lambda: finetune_task("vqa"))
    out["vqa"] = score(vqa, "vqa", [tasks / "vqa.parquet"], k_answers=args.k_answers)
    out["video_qa"] = score(vqa, "video_qa", [tasks / "clips_qa.parquet", tasks / "clips.parquet"],
                            frames=args.frames, k_answers=args.k_answers)
    nlvr2 = run.timed(f"{name}_nlvr2", lambda: finetune_task("nlvr2"))
    out["nlvr2"] = score(nlvr2, "nlvr2", [tasks / "nlvr2.parquet"])
    dialog = run.timed(f"{name}_dialog", lambda: finetune_task("dialog"))
    out["dialog"] = score(dialog, "dialog", [tasks / "dialog.parquet"])
    for metrics in out.values():
        metrics.pop("examples", None)
    return out


def markdown(per_seed: list[dict[str, Any]], budget: dict[str, Any]) -> str:
    lines = [f"Seven tasks, tiny model, toy world; seeds {[s['seed'] for s in per_seed]} "
             f"(values per seed, ' / ' between seeds). Budget: {json.dumps(budget)}", "",
             "| task, metric | " + " | ".join(DATASETS.values()) + " |", "|---|" + "---|" * len(DATASETS)]
    for task, metric, label in ROWS:
        cells = [" / ".join(f"{s['results'][d][task][metric]:.3f}" for s in per_seed) for d in DATASETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tasks(path: Path, per_seed: list[dict[str, Any]], budget: dict[str, Any], run_facts: dict[str, Any]) -> None:
    result = {"benchmark": "tasks", "seeds": [s["seed"] for s in per_seed], "budget": budget, **run_facts,
              "per_seed": per_seed}
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(per_seed, budget)
    path.with_suffix(".md").write_text(table)
    print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--output", type=Path, default=Path("tasks.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    known, rest = parser.parse_known_args(argv)
    from benchmarks.capfilt_ablation import main as ablation

    # the two pre-trainings' own figures (retrieval, CIDEr) land beside, as the ablation writes them
    pretraining = known.output.with_name(known.output.stem + "_pretraining.json")
    return ablation(["--datasets", "web", "web+both_nucleus", "--tasks-output", str(known.output),
                     "--output", str(pretraining), "--seeds", *map(str, known.seeds), *rest])


if __name__ == "__main__":
    sys.exit(main())
