"""Model speed: pre-training samples/s, and captions/s with the KV cache against without it.

    python -m benchmarks.model_speed [--output out/model_speed.json] [--preset tiny] [--device cpu]

Both generation paths run in the same process on the same model, images and seeds, alternating
repeat by repeat so that a busy machine slows both alike; the JSON gives every repeat, the
median and the ratio, and whether the two paths wrote the same captions. The model is a random
init: its captions are noise and mostly run to max_length, which makes the work per caption
fixed and the same for both paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import transformers

from model.config import preset
from model.generation import GenerationSettings, generate_captions
from model.med import MED
from model.pretrain_task import TrainingTask
from model.tokenizer import TextTokenizer, train_wordpiece

# A few toy-world sentences: the tokenizer only needs the prompt's words and the specials.
CORPUS = [
    f"a picture of a {size} {colour} {shape} {where}"
    for size in ("small", "big")
    for colour in ("red", "green", "blue")
    for shape in ("circle", "square", "triangle")
    for where in ("on the left", "at the top")
]


class _ClippedTokenizer:
    """The toy tokenizer for a model whose vocabulary is larger (base, large): ids past the
    tokenizer's vocabulary decode to nothing, so the model keeps its real output size."""

    def __init__(self, tok: TextTokenizer):
        self.tok = tok

    def encode_prompt(self, text: str) -> list[int]:
        return self.tok.encode_prompt(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([i for i in ids if i < self.tok.vocab_size])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        # The machine may be shared: the load at the start says how far to trust the figures.
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench_training(med: MED, tok: TextTokenizer, args: argparse.Namespace, device: torch.device) -> dict:
    task = TrainingTask(med, "pretrain", queue_size=args.queue_size).to(device).train()
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    size, batch = med.config.image_size, args.train_batch
    gen = torch.Generator().manual_seed(0)
    texts = [CORPUS[i % len(CORPUS)] for i in range(batch)]
    ids, mask = tok.encode(texts, med.config.max_text_len)
    counter = iter(range(10**9))

    def one_step() -> None:
        first = next(counter) * batch  # fresh image ids, as a stream of distinct images
        data = {
            "pixel_values": torch.randn(batch, 3, size, size, generator=gen).to(device),
            "input_ids": ids.to(device), "attention_mask": mask.to(device),
            "image_ids": torch.arange(first, first + batch, device=device),
        }
        loss = task.step(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        one_step()
    rates = []
    for _ in range(args.repeats):
        seconds, _ = _timed(lambda: [one_step() for _ in range(args.train_steps)], device)
        rates.append(batch * args.train_steps / seconds)
    return {
        "task": "pretrain (ITC+ITM+LM), forward + backward + AdamW",
        "batch": batch, "steps_per_repeat": args.train_steps, "queue_size": args.queue_size,
        "samples_per_s": rates, "median_samples_per_s": statistics.median(rates),
    }


def bench_generation(med: MED, tok, args: argparse.Namespace, device: torch.device) -> dict:
    med.eval()
    settings = GenerationSettings(
        num_captions=args.captions, max_length=args.max_length, min_length=args.min_length, decoding="nucleus"
    )
    size = med.config.image_size
    images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    seeds = list(range(args.images))
    run = {flag: (lambda flag=flag: generate_captions(med, tok, images, seeds, settings, use_cache=flag)) for flag in (True, False)}
    for _ in range(args.warmup):
        run[True](), run[False]()
    times: dict[bool, list[float]] = {True: [], False: []}
    captions: dict[bool, object] = {}
    for _ in range(args.repeats):
        for flag in (True, False):  # alternate, so that both paths see the same machine load
            seconds, captions[flag] = _timed(run[flag], device)
            times[flag].append(seconds)
    n = args.images * args.captions
    cached = statistics.median(times[True])
    uncached = statistics.median(times[False])
    return {
        "settings": settings.model_dump(),
        "images": args.images, "captions_per_call": n,
        "with_cache_captions_per_s": [n / t for t in times[True]],
        "without_cache_captions_per_s": [n / t for t in times[False]],
        "median_with_cache_captions_per_s": n / cached,
        "median_without_cache_captions_per_s": n / uncached,
        "speedup_cache_over_no_cache": uncached / cached,
        "same_captions": captions[True] == captions[False],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("out/model_speed.json"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--queue-size", type=int, default=57_600)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--captions", type=int, default=4, help="captions per image")
    parser.add_argument("--max-length", type=int, default=30)
    parser.add_argument("--min-length", type=int, default=10)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    tok = train_wordpiece(CORPUS, vocab_size=200)
    config = preset(args.preset, tokens=tok.ids)
    if args.preset == "tiny":
        config = config.replace(vocab_size=max(config.vocab_size, tok.vocab_size))
    med = MED(config).to(device)
    gen_tok = _ClippedTokenizer(tok) if config.vocab_size > tok.vocab_size else tok

    report = {
        "benchmark": "model_speed", "preset": args.preset, "machine": machine(device),
        "image_size": config.image_size, "vocab_size": config.vocab_size,
    }
    if not args.skip_training:
        report["training"] = bench_training(med, tok, args, device)
    report["generation"] = bench_generation(med, gen_tok, args, device)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    train = report.get("training", {}).get("median_samples_per_s")
    g = report["generation"]
    print(
        f"{args.preset} on {device}: training {train and round(train, 1)} samples/s; captions/s "
        f"{g['median_with_cache_captions_per_s']:.1f} cached vs {g['median_without_cache_captions_per_s']:.1f} "
        f"uncached (x{g['speedup_cache_over_no_cache']:.2f}); same captions: {g['same_captions']} -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
