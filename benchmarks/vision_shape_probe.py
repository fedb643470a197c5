"""How fast the tiny preset's ViT learns to tell shapes apart, trained from scratch, with a small
CNN as the yardstick for "the shape is in the pixels".

    python benchmarks/vision_shape_probe.py --world DIR --output vision_shape_probe.json \
        [--vit-steps 3000 --cnn-steps 600 --eval-every 200]

Both learn one thing, supervised: the shape (6 classes) of the one object in the one-object
scenes of the human split, batch 32, AdamW lr 1e-3 (weight decay 0.05), 100 warm-up steps; the
ViT classifies from its [CLS] output with a linear head. Test accuracy on the `test` split's
one-object scenes is written every `--eval-every` steps. The captioner and the filter must learn
shape through the same ViT from a far weaker signal (one word of a caption, a hard negative), so
this bounds how soon they can name it. The CNN is a measuring stick, not a proposal: BLIP's
image encoder is a ViT, and BLIP starts it from ImageNet weights rather than from scratch.
A benchmark, not a test.
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


def one_object_shapes(world, split_name: str, limit: int, config):
    import torch

    from capfilt.world.scene import SHAPES
    from pipelines.train.evaluate import load_split, pixel_values

    split = load_split([str(world.path(split_name))], limit)
    keep = [i for i, key in enumerate(split.keys) if len(world.scene(key).objects) == 1]
    pixels = pixel_values([split.images[i] for i in keep], config)
    labels = torch.tensor([SHAPES.index(world.scene(split.keys[i]).objects[0].shape) for i in keep])
    return pixels, labels


def small_cnn(classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(128, classes),
    )


def vit_classifier(config, classes: int):
    """The preset's ViT, built and initialised as the MED builds it, with a linear head on [CLS]."""
    from torch import nn

    from model.med import MED

    class ViTClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = MED(config).vision
            self.head = nn.Linear(config.vision_width, classes)

        def forward(self, pixel_values):
            return self.head(self.vision(pixel_values=pixel_values).last_hidden_state[:, 0])

    return ViTClassifier()


def train(model, train_data, test_data, *, steps: int, eval_every: int, lr: float, warmup: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    pixels, labels = train_data
    test_pixels, test_labels = test_data
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    curve, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / max(1, warmup))
        picked = torch.randint(len(labels), (32,), generator=generator)
        loss = F.cross_entropy(model(pixels[picked]), labels[picked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                accuracy = (model(test_pixels).argmax(1) == test_labels).float().mean().item()
            model.train()
            curve.append({"step": step, "train_loss": round(float(loss), 3), "test_accuracy": round(accuracy, 3),
                          "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(curve[-1]), flush=True)
    return {"curve": curve, "final_test_accuracy": curve[-1]["test_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="A made toy world (capfilt world make).")
    parser.add_argument("--output", type=Path, default=Path("vision_shape_probe.json"))
    parser.add_argument("--vit-steps", type=int, default=3000)
    parser.add_argument("--cnn-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--human-images", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from capfilt.world.scene import SHAPES
    from capfilt.world.store import World
    from model.config import preset

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    world = World.load(args.world)
    config = preset("tiny", vocab_size=1024)  # the text side is not used
    train_data = one_object_shapes(world, "human", args.human_images, config)
    test_data = one_object_shapes(world, "test", 100_000, config)
    common = dict(eval_every=args.eval_every, lr=args.lr, warmup=args.warmup, seed=args.seed)
    vit = train(vit_classifier(config, len(SHAPES)), train_data, test_data, steps=args.vit_steps, **common)
    cnn = train(small_cnn(len(SHAPES)), train_data, test_data, steps=args.cnn_steps, **common)
    result = {"benchmark": "vision_shape_probe",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("world", "output")},
              "data": {"train_images": len(train_data[1]), "test_images": len(test_data[1]),
                       "chance": round(1 / len(SHAPES), 3)},
              "vit": {"preset": "tiny", "image_size": config.image_size, "patch_size": config.patch_size,
                      "position_init": config.position_init, **vit},
              "cnn": cnn}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
