"""How soon a tiny MED trained from scratch leaves the ITC/ITM plateau, by init range, position
start and lr.

    python benchmarks/filter_plateau.py --world DIR --output filter_plateau.json \
        [--init-ranges 0.02 0.05 --position-inits random --lrs 1e-3 --seeds 0 1 2 --steps 300]

For each (init range, position start, lr, seed): a fresh tiny MED trains the filter task (ITC + ITM,
momentum encoders and queue as in pre-training) in this process, no Ray, on the world's human split, batch
32, warm-up 20 steps then cosine; then its ITM scores the world's web captions, and the JSON gives
the ROC-AUC of correct against each noise kind, the mean ITM of each kind, the last ITC and ITM
losses and the wall seconds. At init every caption's [CLS] is nearly the same vector, so ITM sits at
its prior (loss H(1/3) = 0.636) until the text side differentiates: this measures how long that
takes. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def train_and_score(world, split, web_rows, *, init_range: float, position_init: str, lr: float, seed: int,
                    steps: int, batch_size: int, tokenizer) -> dict:
    import torch

    from model.config import preset
    from model.med import MED
    from model.pretrain_task import TrainingTask, ramped_alpha
    from model.scoring import score_captions
    from pipelines.train.evaluate import pixel_values
    from pipelines.train.optim import lr_at, make_optimizer
    from toy_quality import roc_auc

    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=tokenizer.vocab_size, tokens=tokenizer.ids, init_range=init_range,
                    position_init=position_init)
    med = MED(config)
    pixels = pixel_values(split.images, config)
    rows = [(i, c) for i, captions in enumerate(split.captions) for c in captions]
    task = TrainingTask(med, "filter", queue_size=1024)
    optimizer = make_optimizer(med, lr)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=lr, min_lr=1e-6, warmup_steps=20, total_steps=steps, decay="cosine")
        picked = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        ids, mask = tokenizer.encode([rows[i][1] for i in picked], config.max_text_len)
        images = [rows[i][0] for i in picked]
        batch = {"pixel_values": pixels[images], "input_ids": ids, "attention_mask": mask,
                 "image_ids": torch.tensor(images)}
        out = task.step(batch, alpha=ramped_alpha(step, steps // 5), generator=generator)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        last = {"itc": float(out["itc"]), "itm": float(out["itm"])}
    train_s = time.perf_counter() - started

    med.eval()
    labels = world.web_labels
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(web_rows), 64):
            chunk = web_rows[start : start + 64]
            px = pixel_values([world.image_path(labels[r["key"]]["image_id"]).read_bytes() for r in chunk], config)
            scores += [s[0] for s in score_captions(med, tokenizer, px, [[r["caption"]] for r in chunk]).itm]
    by_kind: dict[str, list[float]] = {}
    for r, s in zip(web_rows, scores):
        by_kind.setdefault(labels[r["key"]]["noise"], []).append(s)
    clean = by_kind.get("correct", [])
    return {"init_range": init_range, "position_init": position_init, "lr": lr, "seed": seed, "steps": steps,
            "train_s": round(train_s, 1),
            "last_losses": {k: round(v, 3) for k, v in last.items()},
            "auc": {k: round(roc_auc(clean, v), 3) for k, v in by_kind.items() if k != "correct"},
            "mean_itm": {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="A made toy world (capfilt world make).")
    parser.add_argument("--output", type=Path, default=Path("filter_plateau.json"))
    parser.add_argument("--init-ranges", type=float, nargs="+", default=[0.02, 0.05])
    # results/filter_plateau.json predates the sine-cosine start: it ran with "random"
    parser.add_argument("--position-inits", nargs="+", default=["random", "sincos"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--human-images", type=int, default=1000)
    parser.add_argument("--web-rows", type=int, default=600)
    args = parser.parse_args(argv)

    from scratch_setup import world_split_tokenizer

    world, split, tokenizer = world_split_tokenizer(args.world, args.human_images)
    labels = world.web_labels
    web_rows = [r for r in world.table("web").to_pylist()
                if r["caption"] and labels[r["key"]]["fetch"] == "ok"][: args.web_rows]
    runs = []
    for init_range in args.init_ranges:
        for position_init in args.position_inits:
            for lr in args.lrs:
                for seed in args.seeds:
                    run = train_and_score(world, split, web_rows, init_range=init_range, position_init=position_init,
                                          lr=lr, seed=seed, steps=args.steps, batch_size=args.batch_size,
                                          tokenizer=tokenizer)
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    result = {"benchmark": "filter_plateau", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("world", "output")}, "runs": runs}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
