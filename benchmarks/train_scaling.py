"""Ray Train scaling: pre-training samples/s of the tiny MED with 1 and with 2 workers, in one run.

    python benchmarks/train_scaling.py --output train_scaling.json [--data PATH ...] [--steps 30]

Without --data it trains on a generated set of coloured squares (captions that say colour and
side). Each worker count runs the same job into its own folder; samples/s is the median of the
per-log-step rates after the first `--skip` steps (start-up, Ray Data warm-up). On one machine
both workers share its cores: the figure says what DDP on gloo costs and gains there, not what a
cluster would do.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def synthetic_pairs(path: Path, n: int, size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    rows: dict[str, list] = {"key": [], "image": [], "caption": []}
    for i in range(n):
        colour, side = rng.choice(list(COLOURS)), rng.choice(["left", "right"])
        image = Image.new("RGB", (size, size), (240, 240, 240))
        x = size // 16 if side == "left" else size // 2 + size // 16
        ImageDraw.Draw(image).rectangle([x, size // 3, x + size // 3, 2 * size // 3], fill=COLOURS[colour])
        buf = io.BytesIO()
        image.save(buf, "JPEG")
        rows["key"].append(f"{i:06d}")
        rows["image"].append(buf.getvalue())
        rows["caption"].append(f"a {colour} square on the {side}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def run(data: list[str], workers: int, args, root: Path) -> dict:
    from pipelines.train.job import run_training
    from pipelines.train.metrics import read_metrics
    from pipelines.train.settings import TrainSettings

    out = root / f"workers{workers}"
    settings = TrainSettings(data=data, output=out, num_workers=workers, batch_size=args.batch_size,
                             image_size=args.image_size, max_steps=args.steps, log_every=1,
                             checkpoint_every=10_000, warmup_steps=5, shuffle_buffer=0, seed=0)
    start = time.perf_counter()
    summary = run_training(settings)
    wall = time.perf_counter() - start
    rates = [r["samples_per_s"] for r in read_metrics(out) if "samples_per_s" in r and r["step"] > args.skip]
    return {"workers": workers, "batch_size_per_worker": args.batch_size, "steps": summary.get("step"),
            "samples_per_s_median": statistics.median(rates) if rates else None,
            "samples_per_s_mean": statistics.fmean(rates) if rates else None,
            "measured_steps": len(rates), "job_wall_s": round(wall, 1),
            "replicas_equal": summary.get("replicas_equal")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("train_scaling.json"))
    parser.add_argument("--data", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    import ray

    with tempfile.TemporaryDirectory(prefix="train-scaling-") as tmp:
        root = Path(tmp)
        data = args.data or [str(synthetic_pairs(root / "data" / "pairs.parquet",
                                                 max(args.workers) * args.batch_size * (args.steps + 2), args.image_size))]
        ray.init(num_cpus=max(os.cpu_count() or 1, max(args.workers) + 1), include_dashboard=False,
                 log_to_driver=False)
        try:
            runs = [run(data, w, args, root) for w in args.workers]
        finally:
            ray.shutdown()
    base = runs[0]["samples_per_s_median"]
    for r in runs:
        r["speedup_vs_first"] = round(r["samples_per_s_median"] / base, 3) if base and r["samples_per_s_median"] else None
    result = {"benchmark": "train_scaling", "model": "tiny", "task": "pretrain (ITC+ITM+LM)",
              "image_size": args.image_size, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "data": "generated squares" if not args.data else args.data, "runs": runs,
              "note": "workers share this machine's cores; samples/s = all workers together"}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
