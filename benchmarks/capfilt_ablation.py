"""BLIP's Table 1 (and the noise ratios of Table 2) in miniature, on the toy world.

    python benchmarks/capfilt_ablation.py --output capfilt_ablation.json [--seeds 0 1 2] \
        [--vision-steps 2500 | --pretrain-init DIR] [--tasks-output tasks.json] \
        [--pretrain-steps 300 --finetune-steps 150 --caption-steps 60 --web-size 600 ...]
    # seeds run apart (in parallel, each with its own --work), then one table:
    python benchmarks/capfilt_ablation.py --output capfilt_ablation.json --merge s0.json s1.json s2.json

The pipeline is benchmarks/toy_recipe.py's, shared with benchmarks/tasks.py. Per seed: a world
with its task files and a tokenizer over its texts; a tiny model's ViT is warmed up on labelled
toy pictures (`capfilt model pretrain-vision`, the toy world's stand-in for BLIP's ImageNet start;
--pretrain-init gives one ready-made, shared by the seeds); the raw web is downloaded from the
served world; a model pre-trained from it on human +
raw web gives the captioner and the filter (fine-tuned on human), as in BLIP. Then the same
pre-training budget (steps x batch, from the same warmed-up ViT) runs on human + each of five web
datasets:

    web as is                   every downloaded web caption
    web + filter                web captions the filter keeps
    web + captioner             every web caption + one nucleus-sampled synthetic caption per image
    web + both (nucleus)        CapFilt: kept web + kept nucleus captions
    web + both (beam)           CapFilt with beam search: kept web + kept beam captions

(the first four come from one nucleus bootstrap, re-deciding what is kept from its ITM scores;
the fifth from a beam bootstrap with the same models and threshold). Each pre-trained model is
evaluated on `test`: zero-shot TR@1 and IR@1, and CIDEr of a captioner fine-tuned on human with
a fixed number of steps. The toy world's checker gives the noise ratio (BLIP's Table 2) of the
synthetic captions and of the web captions, all and those the filter kept, and the diversity of
the synthetic captions: distinct captions per captioned image (distinct caption texts over the
images they describe: 1.0 when no two images got the same caption; one caption per image is
sampled, as in BLIP). Writes JSON and a Markdown table laid out like the paper's Table 1 (mean ±
half the range over seeds), and each dataset's difference from web as is paired by seed (each
seed is its own world and test set, so that difference is the fair comparison). A benchmark, not
a test; the budget is a flag.

The recipe is BLIP's code's, through the jobs' defaults: nucleus sampling with top-k 50 before
top-p 0.9 and repetition penalty 1.1; pre-training positives are the pair itself, the filter's
fine-tune positives are by image; captions cleaned by pre_caption; the model stages prepare the
images they are given at the model's size. The tiny preset trains without dropout (see
model/config.py). The filter's threshold is BLIP's 0.5 (--threshold): a threshold derived from the
world's web noise labels (as `capfilt calibrate` would) would tune the filter on the labels the
results are measured with, so none is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tasks import TASK_MODELS, add_task_arguments, task_budget  # noqa: E402
from benchmarks.toy_recipe import ToyRun, local_ray, make_task_world, served  # noqa: E402

DATASETS = {
    "web": ("no", "no", "web as is"),
    "web+filter": ("no", "yes", "web + filter"),
    "web+captioner": ("yes (nucleus)", "no", "web + captioner"),
    "web+both_nucleus": ("yes (nucleus)", "yes", "web + both (nucleus)"),
    "web+both_beam": ("yes (beam)", "yes", "web + both (beam)"),
}
METRICS = ("tr@1", "ir@1", "cider")
SYNTHETIC_FIGURES = ("noise_all", "noise_kept", "distinct_per_image_all", "distinct_per_image_kept")


def rekeep(source: Path, dest: Path, web: str, synthetic: str, threshold: float) -> Path:
    """A copy of a bootstrap output's Parquet with the kept flags decided again from its scores:
    web / synthetic in {"all", "none", "filter"}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (dest / "parquet").mkdir(parents=True, exist_ok=True)
    for f in sorted((source / "parquet").glob("*.parquet")):
        t = pq.read_table(f)
        rows = t.to_pylist()
        for r in rows:
            ok = r["status"] == "ok"
            r["web_kept"] = ok and bool(r["web_caption"]) and (
                web == "all" or (web == "filter" and r["web_itm"] is not None and r["web_itm"] >= threshold))
            scores = r["synthetic_itm"] or []
            r["synthetic_kept"] = [ok and (synthetic == "all" or (synthetic == "filter" and s is not None
                                                                  and s >= threshold)) for s in scores]
        pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), dest / "parquet" / f.name)
    return dest


def synthetic_noise(world, folder: Path) -> dict[str, Any]:
    """Noise ratio (world checker) of every synthetic caption, and of the kept ones."""
    import pyarrow.parquet as pq

    labels = world.web_labels
    rows = pq.read_table(folder / "parquet", columns=["key", "status", "synthetic_captions",
                                                     "synthetic_kept"]).to_pylist()
    all_pairs, kept_pairs = [], []
    for r in rows:
        if r["status"] != "ok":
            continue
        image = labels[r["key"]]["image_id"]
        for c, k in zip(r["synthetic_captions"] or [], r["synthetic_kept"] or []):
            all_pairs.append((image, c))
            if k:
                kept_pairs.append((image, c))
    ratio = lambda pairs: world.noise_ratio([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None  # noqa: E731
    return {"generated": len(all_pairs), "noise_all": ratio(all_pairs), "kept": len(kept_pairs),
            "noise_kept": ratio(kept_pairs), "distinct_per_image_all": distinct_per_image(all_pairs),
            "distinct_per_image_kept": distinct_per_image(kept_pairs)}


def distinct_per_image(pairs: list[tuple[str, str]]) -> float | None:
    """Distinct caption texts over the images they describe (1.0: no two images share one)."""
    images = {image for image, _ in pairs}
    return len({caption for _, caption in pairs}) / len(images) if images else None


def web_noise(world, folder: Path) -> dict[str, Any]:
    """Noise ratio (world checker) of the downloaded web captions, all and those the filter kept."""
    import pyarrow.parquet as pq

    labels = world.web_labels
    rows = pq.read_table(folder / "parquet", columns=["key", "status", "web_caption", "web_kept"]).to_pylist()
    every = [(labels[r["key"]]["image_id"], r["web_caption"]) for r in rows if r["status"] == "ok" and r["web_caption"]]
    kept = [(labels[r["key"]]["image_id"], r["web_caption"]) for r in rows
            if r["status"] == "ok" and r["web_caption"] and r["web_kept"]]
    ratio = lambda pairs: world.noise_ratio([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None  # noqa: E731
    return {"captions": len(every), "noise_all": ratio(every), "kept": len(kept), "noise_kept": ratio(kept)}


def web_counts(folder: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "parquet", columns=["web_kept", "synthetic_kept"]).to_pylist()
    return {"web": sum(bool(r["web_kept"]) for r in rows),
            "synthetic": sum(sum(bool(k) for k in r["synthetic_kept"] or []) for r in rows)}


def one_seed(args, run: ToyRun) -> dict[str, Any]:
    from pipelines.train.evaluate import evaluate
    from pipelines.train.settings import EvaluateSettings

    test, seed = str(run.world.path("test")), run.seed

    def pretrain(name: str, web: Path) -> Path:
        return run.timed(f"pretrain_{name}", lambda: run.pretrain(name, web, init, steps=args.pretrain_steps,
                                                                  lr=args.pretrain_lr))

    def finetune(task: str, model: Path, out: Path, steps: int) -> Path:
        lr = args.caption_lr if task == "caption" else args.filter_lr
        return run.finetune(task, model, out, steps=steps, lr=lr, label_smoothing=args.caption_label_smoothing)

    init = args.pretrain_init or (run.timed("vision_warmup", lambda: run.warm_vision(args.vision_steps))
                                  if args.vision_steps > 0 else None)
    raw = run.timed("fetch", run.fetch)
    # the captioner and the filter: from a model pre-trained on the noisy web, fine-tuned on human
    base = pretrain("base", raw)
    captioner = run.timed("finetune_captioner", lambda: finetune("caption", base, run.work / "captioner",
                                                                 args.captioner_steps or args.finetune_steps))
    filter_ = run.timed("finetune_filter", lambda: finetune("filter", base, run.work / "filter", args.finetune_steps))
    nucleus = run.timed("bootstrap_nucleus", lambda: run.bootstrap_from_raw(
        "nucleus", raw, captioner, filter_, decoding="nucleus", top_k=args.top_k, top_p=args.top_p))
    beam = (run.timed("bootstrap_beam", lambda: run.bootstrap_from_raw("beam", raw, captioner, filter_, decoding="beam",
                                                                       num_beams=args.num_beams))
            if "web+both_beam" in args.datasets else None)
    sources = {
        "web": lambda: rekeep(raw, run.work / "d_web", "all", "none", args.threshold),
        "web+filter": lambda: rekeep(nucleus, run.work / "d_filter", "filter", "none", args.threshold),
        "web+captioner": lambda: rekeep(nucleus, run.work / "d_captioner", "all", "all", args.threshold),
        "web+both_nucleus": lambda: nucleus,
        "web+both_beam": lambda: beam,
    }
    results: dict[str, Any] = {}
    models: dict[str, Path] = {}
    for name in args.datasets:
        folder = sources[name]()
        model = models[name] = pretrain(name, folder)
        retrieval = evaluate(EvaluateSettings(checkpoint=model, data=[test], tasks=["retrieval"],
                                              max_images=args.eval_images, seed=seed))["retrieval"]
        cap = run.timed(f"caption_{name}", lambda: finetune("caption", model, run.work / name / "captioner",
                                                            args.caption_steps))
        caption = evaluate(EvaluateSettings(checkpoint=cap, data=[test], tasks=["caption"], max_images=args.eval_images,
                                            max_length=20, min_length=3, seed=seed))["caption"]
        results[name] = {"tr@1": retrieval["tr@1"], "ir@1": retrieval["ir@1"], "tr@5": retrieval["tr@5"],
                         "ir@5": retrieval["ir@5"], "bleu4": caption["bleu4"], "cider": caption["cider"],
                         "pairs_from_web": web_counts(folder)}
    noise = {"nucleus": synthetic_noise(run.world, nucleus), "web": web_noise(run.world, nucleus)}
    if beam is not None:
        noise["beam"] = synthetic_noise(run.world, beam)
    out = {"seed": seed, "init": None if init is None else str(init), "datasets": results, "synthetic_noise": noise}
    if args.tasks_output:
        from benchmarks.tasks import seven

        out["tasks"] = {label: seven(args, run, label, models[name]) for label, name in TASK_MODELS.items()}
    return {**out, "seconds": run.timings}


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (over seeds)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in [d for d in DATASETS if all(d in s["datasets"] for s in per_seed)]:
        table[name] = {}
        for metric in METRICS:
            mean, half = spread([s["datasets"][name][metric] for s in per_seed])
            table[name][metric] = {"mean": mean, "half_range": half}
    # Each seed is its own world with its own test images, so a metric moves between seeds more
    # than between datasets; the difference from web as is within a seed is the fair comparison.
    vs_web: dict[str, Any] = {}
    for name in [d for d in table if d != "web" and "web" in table]:
        vs_web[name] = {}
        for metric in METRICS:
            diffs = [s["datasets"][name][metric] - s["datasets"]["web"][metric] for s in per_seed]
            mean, half = spread(diffs)
            vs_web[name][metric] = {"mean": mean, "half_range": half, "seeds_ahead": sum(d > 0 for d in diffs),
                                    "seeds": len(diffs)}
    noise = {}
    for decoding, figures in (("nucleus", SYNTHETIC_FIGURES), ("beam", SYNTHETIC_FIGURES), ("web", ("noise_all", "noise_kept"))):
        for which in figures:
            values = [s["synthetic_noise"][decoding][which] for s in per_seed
                      if s["synthetic_noise"].get(decoding, {}).get(which) is not None]
            if values:
                mean, half = spread(values)
                noise[f"{decoding}_{which}"] = {"mean": mean, "half_range": half}
    return {"table": table, "vs_web": vs_web, "synthetic_noise": noise}


def markdown(summary: dict[str, Any], seeds: list[int], budget: dict[str, Any]) -> str:
    lines = [f"Toy-world CapFilt ablation (BLIP Table 1 layout); mean ± half-range over seeds {seeds}; "
             f"pre-training {budget['pretrain_steps']} steps x {budget['batch_size']} pairs on human + each dataset.",
             "",
             "| Bootstrap: C | F | dataset | TR@1 (zero-shot) | IR@1 (zero-shot) | CIDEr (fine-tuned) |",
             "|---|---|---|---|---|---|"]
    for name, (c, f, label) in DATASETS.items():
        if name not in summary["table"]:
            continue
        cells = [f"{100 * v['mean']:.1f} ± {100 * v['half_range']:.1f}" if m != "cider" else
                 f"{100 * v['mean']:.1f} ± {100 * v['half_range']:.1f}"
                 for m, v in summary["table"][name].items()]
        lines.append(f"| {c} | {f} | {label} | " + " | ".join(cells) + " |")
    if summary.get("vs_web"):
        lines += ["", "Difference from web as is, paired by seed (each seed is its own world and test set): mean ± "
                  "half-range over seeds, and in how many seeds the dataset was ahead:", "",
                  "| dataset | TR@1 | IR@1 | CIDEr |", "|---|---|---|---|"]
        for name, (_, _, label) in DATASETS.items():
            if name in summary["vs_web"]:
                cells = [f"{100 * v['mean']:+.1f} ± {100 * v['half_range']:.1f} ({v['seeds_ahead']}/{v['seeds']})"
                         for v in summary["vs_web"][name].values()]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Noise ratio (world checker, BLIP's Table 2) and diversity (distinct captions per captioned image) "
              "of the captions, all generated (web: all downloaded) and those kept by the filter:", ""]
    lines += ["| captions | noise, all | noise, kept | distinct / image, all | distinct / image, kept |",
              "|---|---|---|---|---|"]
    for decoding, label in (("nucleus", "synthetic, nucleus"), ("beam", "synthetic, beam"), ("web", "web")):
        cells = []
        for which in SYNTHETIC_FIGURES:
            v = summary["synthetic_noise"].get(f"{decoding}_{which}")
            if v is None:
                cells.append("-")
            elif which.startswith("noise"):
                cells.append(f"{100 * v['mean']:.1f} % ± {100 * v['half_range']:.1f}")
            else:
                cells.append(f"{v['mean']:.3f} ± {v['half_range']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("TR@1, IR@1 and CIDEr are x100 (CIDEr x100 as the paper prints it). "
                 f"Filter threshold {budget['threshold']} (BLIP's); pre-training from "
                 + (f"a ViT warmed up for {budget['vision_steps']} steps per seed." if budget.get("vision_steps") else
                    f"one ViT warmed up for {budget['pretrain_init_vision_steps']} steps, shared by the seeds."
                    if budget.get("pretrain_init_vision_steps") else
                    "the given init." if budget.get("pretrain_init") else "a random init."))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("capfilt_ablation.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="Table file (default: OUTPUT with .md).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for every artefact (default: temporary); "
                        "a run started again on it reuses its worlds.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="Run nothing: one table from these runs' JSON files (seeds run apart, e.g. in parallel).")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                        help="Which of the five pre-training datasets to run (default: all).")
    parser.add_argument("--tasks-output", type=Path, default=None,
                        help="Also run BLIP's seven downstream tasks (benchmarks/tasks.py) on the models pre-trained "
                             "on web as is and web + both (nucleus), and write their JSON here (and .md beside).")
    parser.add_argument("--web-size", type=int, default=600)
    parser.add_argument("--human-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--pretrain-steps", type=int, default=300, help="The budget: the same for every dataset.")
    parser.add_argument("--finetune-steps", type=int, default=150, help="Steps of the captioner's and filter's fine-tunes.")
    parser.add_argument("--captioner-steps", type=int, default=None, help="Steps of the captioner's fine-tune "
                        "(default: --finetune-steps).")
    parser.add_argument("--caption-steps", type=int, default=60, help="Fixed fine-tune before CIDEr.")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--caption-lr", type=float, default=1e-3)
    parser.add_argument("--filter-lr", type=float, default=5e-4)
    parser.add_argument("--caption-label-smoothing", type=float, default=0.0)
    parser.add_argument("--vision-steps", type=int, default=2500,
                        help="Steps of each seed's ViT warm-up on labelled pictures (make demo's 2500); 0: none.")
    parser.add_argument("--pretrain-init", type=Path, default=None,
                        help="A ready checkpoint every pre-training starts from, instead of a warm-up per seed.")
    parser.add_argument("--threshold", type=float, default=0.5, help="ITM threshold: BLIP's 0.5, never one "
                        "derived from the world's web labels (see the docstring).")
    parser.add_argument("--top-k", type=int, default=50, help="Nucleus: top-k before top-p (BLIP's 50).")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=100)
    add_task_arguments(parser)
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)

    import tempfile

    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capfilt-ablation-") as tmp, local_ray():
        work = args.work or Path(tmp)
        per_seed = []
        for seed in args.seeds:
            world = make_task_world(work / f"seed{seed}" / "world", seed=seed, web_size=args.web_size,
                                    human_size=args.human_size, test_size=args.test_size,
                                    nlvr2_pairs=args.nlvr2_pairs, clips=args.clips)
            with served(world, work / f"seed{seed}" / "web.parquet") as (urls, port):
                run = ToyRun(world, urls, work / f"seed{seed}" / f"run-{port}", seed, args.batch_size,
                             args.threshold, log=lambda m: print(m, flush=True))
                per_seed.append(one_seed(args, run))
            args.output.write_text(json.dumps({"per_seed": per_seed}, indent=2) + "\n")
    write(args, per_seed, budget_of(args), {"wall_seconds": round(time.perf_counter() - started, 1),
                           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                       "load_average_1m_at_start": load}})
    return 0


def init_vision_steps(init: Path | None) -> int | None:
    """Steps of the ViT warm-up a given init had (`capfilt model pretrain-vision` records them)."""
    extra = None if init is None else Path(init) / "extra.json"
    if extra is None or not extra.is_file():
        return None
    record = json.loads(extra.read_text()).get("vision_pretraining") or {}
    return (record.get("settings") or {}).get("steps")


def budget_of(args) -> dict[str, Any]:
    return {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
            "captioner_steps": args.captioner_steps or args.finetune_steps,
            "caption_steps": args.caption_steps, "batch_size": args.batch_size, "web_size": args.web_size,
            "human_size": args.human_size, "test_size": args.test_size, "threshold": args.threshold,
            "top_k": args.top_k, "top_p": args.top_p, "num_beams": args.num_beams, "eval_images": args.eval_images,
            "vision_steps": 0 if args.pretrain_init else args.vision_steps,
            "pretrain_init": None if args.pretrain_init is None else str(args.pretrain_init),
            "pretrain_init_vision_steps": init_vision_steps(args.pretrain_init),
            # what the jobs' defaults do (see the docstring); recorded so a table says its recipe
            "recipe": {"pretrain_positives": "pair", "filter_positives": "image", "pre_caption": True,
                       "caption_max_words": 30, "model_image": "original", "repetition_penalty_nucleus": 1.1,
                       "tiny_dropout": 0.0, "tokenizer": "WordPiece over the world's captions and task texts"},
            "lr": {"pretrain": args.pretrain_lr, "caption": args.caption_lr, "filter": args.filter_lr},
            "caption_label_smoothing": args.caption_label_smoothing, **task_budget(args)}


def write(args, per_seed: list[dict[str, Any]], budget: dict[str, Any], run_facts: dict[str, Any]) -> None:
    """The ablation's JSON and table (and the tasks' where they ran), from the seeds' results."""
    per_seed = sorted(per_seed, key=lambda s: s["seed"])
    seeds, summary = [s["seed"] for s in per_seed], summarise(per_seed)
    result = {"benchmark": "capfilt_ablation", "seeds": seeds, "budget": budget, **run_facts, **summary,
              "per_seed": per_seed}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(summary, seeds, budget)
    (args.markdown or args.output.with_suffix(".md")).write_text(table)
    print(table)
    with_tasks = [s for s in per_seed if "tasks" in s]
    if args.tasks_output and with_tasks:
        from benchmarks.tasks import write_tasks

        write_tasks(args.tasks_output, [{"seed": s["seed"], "results": s["tasks"], "seconds": s["seconds"]}
                                        for s in with_tasks], budget, run_facts)


def merge(args) -> int:
    """One table from seeds run apart (each its own JSON, as this script writes it); the budget
    must be the same in every file, and the table states it."""
    runs = [json.loads(p.read_text()) for p in args.merge]
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in runs}
    if len(budgets) != 1:
        raise SystemExit(f"--merge: the runs' budgets differ: {sorted(budgets)}")
    per_seed = [s for r in runs for s in r["per_seed"]]
    if len({s["seed"] for s in per_seed}) != len(per_seed):
        raise SystemExit("--merge: a seed appears in more than one file")
    write(args, per_seed, runs[0]["budget"], {"wall_seconds": [r["wall_seconds"] for r in runs],
                                              "machine": runs[0]["machine"],
                                              "merged_from": [p.name for p in args.merge]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
