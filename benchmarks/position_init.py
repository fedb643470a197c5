"""Does the tiny captioner learn where things are? Position-embedding start: random vs sine-cosine.

    python benchmarks/position_init.py --world DIR --output position_init.json \
        [--inits random sincos --seeds 0 1 --steps 800]

For each (start, seed): a fresh tiny MED trains the captioner task (LM, prompt "a picture of ",
no label smoothing) in this process, no Ray, on the world's human split, batch 32, lr 1e-3, warm-up
20 steps then cosine, with the training job's random resized crop; then it captions the `test`
split greedily and with nucleus sampling (top-p 0.9), and the JSON gives the share of captions the
world's checker finds true, and, on one-object scenes, how often each named attribute (size,
colour, shape, place) is right. A benchmark, not a test.
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

PROMPT = "a picture of "


def train_and_caption(world, split, test, *, position_init: str, seed: int, steps: int, batch_size: int,
                      lr: float, crop_scale_min: float, tokenizer) -> dict:
    import torch

    from capfilt.world.attributes import attribute_accuracy
    from model.config import preset
    from model.generation import row_seed
    from model.med import MED
    from model.pretrain_task import TrainingTask
    from pipelines.train.augment import random_resized_crop
    from pipelines.train.evaluate import generate, pixel_values
    from pipelines.train.optim import lr_at, make_optimizer
    from pipelines.train.settings import EvaluateSettings

    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=tokenizer.vocab_size, tokens=tokenizer.ids, position_init=position_init)
    med = MED(config)
    pixels = pixel_values(split.images, config)
    rows = [(i, c) for i, captions in enumerate(split.captions) for c in captions]
    task = TrainingTask(med, "captioner", label_smoothing=0.0, prompt_length=len(tokenizer.encode_prompt(PROMPT)))
    optimizer = make_optimizer(med, lr)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    loss = float("nan")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=lr, min_lr=1e-6, warmup_steps=20, total_steps=steps, decay="cosine")
        picked = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        ids, mask = tokenizer.encode([PROMPT + rows[i][1] for i in picked], config.max_text_len)
        images = random_resized_crop(pixels[[rows[i][0] for i in picked]], crop_scale_min, generator)
        out = task.step({"pixel_values": images, "input_ids": ids, "attention_mask": mask})
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        loss = float(out["loss"].detach())
    train_s = time.perf_counter() - started

    med.eval()
    test_pixels = pixel_values(test.images, config)
    scenes = [world.scene(key) for key in test.keys]
    seeds = [row_seed(seed, i) for i in range(len(test.keys))]
    decoded = {}
    for decoding in ("greedy", "nucleus"):
        settings = EvaluateSettings(checkpoint=Path("."), data=["."], decoding=decoding, max_length=30,
                                    min_length=3, top_p=0.9)
        captions = generate(med, tokenizer, test_pixels, settings, seeds)
        checks = [world.check(scene, c) for scene, c in zip(scenes, captions)]
        decoded[decoding] = {"true_share": round(sum(c.true for c in checks) / len(checks), 3),
                             "unparsed_share": round(sum(not c.parsed for c in checks) / len(checks), 3),
                             **attribute_accuracy(scenes, captions)}
    return {"position_init": position_init, "seed": seed, "steps": steps, "train_s": round(train_s, 1),
            "last_loss": round(loss, 3), **decoded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="A made toy world (capfilt world make).")
    parser.add_argument("--output", type=Path, default=Path("position_init.json"))
    parser.add_argument("--inits", nargs="+", default=["random", "sincos"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--crop-scale-min", type=float, default=0.8)
    parser.add_argument("--human-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=200)
    args = parser.parse_args(argv)

    from pipelines.train.evaluate import load_split
    from scratch_setup import world_split_tokenizer

    world, split, tokenizer = world_split_tokenizer(args.world, args.human_images)
    test = load_split([str(world.path("test"))], args.test_images)
    runs = []
    for position_init in args.inits:
        for seed in args.seeds:
            run = train_and_caption(world, split, test, position_init=position_init, seed=seed, steps=args.steps,
                                    batch_size=args.batch_size, lr=args.lr, crop_scale_min=args.crop_scale_min,
                                    tokenizer=tokenizer)
            print(json.dumps(run), flush=True)
            runs.append(run)
    result = {"benchmark": "position_init", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("world", "output")}, "runs": runs}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
