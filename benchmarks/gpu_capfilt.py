"""Caption + filter images/s on a GPU at BLIP's real shapes, against the plain transformers loop on
the same GPU: the script to run when a GPU is lent (it also runs on a CPU, slowly, as a check).

    python -m benchmarks.gpu_capfilt --presets base large --batch-sizes 64 128 256 \
        --output benchmarks/results/gpu_capfilt.json

For each preset (random-weight transformers BLIP checkpoints made on the spot, 384 px):
  capfilt   the model stages' own code (model.generation.generate_captions, then
            model.scoring.score_captions of the web caption and the synthetic one) in the
            precision "auto" resolves to (bf16 on a GPU), ViT attention fused (SDPA), images
            copied from pinned host memory each batch; images/s at each batch size, and the share
            of the bound (a bf16 matmul's rate measured in this run / the FLOPs per image);
  plain     benchmarks/plain_blip_loop.py with --device: transformers' generate one image at a
            time, then one ITM call per caption, float32, over JPEGs served on loopback.
This is the model ceiling: what `capfilt bootstrap` reaches on the GPU actors when the download
and decode workers keep them fed. The GPU's name and the date go into the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.jpeg_server import JpegServer, make_images, write_input
from benchmarks.machine import machine
from benchmarks.random_blip import make_blip_checkpoints
from model.checkpoint import load_checkpoint
from model.flops import capfilt_flops
from model.generation import GenerationSettings, decoder_prefix, generate_captions
from model.precision import cast_for_inference, inference_dtype
from model.scoring import score_captions

WEB = "a red circle on the left near the top of the picture"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def capfilt_rate(ckpt: dict[str, Path], device: str, batch: int, images: int, settings: GenerationSettings,
                 repeats: int) -> dict[str, Any]:
    cap, filt = load_checkpoint(ckpt["captioner"], device=device), load_checkpoint(ckpt["filter"], device=device)
    dtype = inference_dtype("auto", device)
    captioner, scorer = cast_for_inference(cap.med, dtype), cast_for_inference(filt.med, dtype)
    size = cap.config.image_size
    host = torch.randn(batch, 3, size, size)
    host = host.pin_memory() if device.startswith("cuda") else host
    batches = max(1, math.ceil(images / batch))

    def one_batch(b: int) -> None:
        pixels = host.to(device, non_blocking=True)
        seeds = list(range(b * batch, (b + 1) * batch))
        synthetic = generate_captions(captioner, cap.tokenizer, pixels, seeds, settings)
        score_captions(scorer, filt.tokenizer, pixels, [[WEB, *row] for row in synthetic])

    seconds = []
    with torch.inference_mode():
        one_batch(0)  # warm-up: kernels chosen, memory pools grown
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            for b in range(batches):
                one_batch(b)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    median = sorted(seconds)[len(seconds) // 2]
    out = {"batch_size": batch, "images": batches * batch, "seconds": seconds,
           "images_per_second": batches * batch / median, "dtype": str(dtype).replace("torch.", "")}
    if device.startswith("cuda"):
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out  # the models go with this frame; the next call's loads reuse the freed memory


def plain_rate(ckpt: dict[str, Path], workdir: Path, device: str, images: int, settings: GenerationSettings) -> dict:
    captions = make_images(workdir / "images", images, size=384)
    report = workdir / "plain.json"
    with JpegServer(workdir / "images") as server:
        table = write_input(workdir / "plain_input.parquet", server.base_url, captions)
        subprocess.run([sys.executable, "-m", "benchmarks.plain_blip_loop", "--input", str(table), "--report",
                        str(report), "--captioner", str(ckpt["captioner"]), "--filter", str(ckpt["filter"]),
                        "--top-p", str(settings.top_p), "--max-length", str(settings.max_length),
                        "--device", device], check=True)
    at = json.loads(report.read_text())["seconds_at_image"]
    # the first image pays for kernel selection and warm-up: the rate is over the rest
    return {"images": images, "images_per_second": (len(at) - 1) / (at[-1] - at[0]) if len(at) > 1 else None,
            "precision": "fp32", "one_image_at_a_time": True}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["base", "large"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--images", type=int, default=1024, help="images per timed pass at each batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-images", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-gpu"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/gpu_capfilt.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = GenerationSettings(max_length=args.max_length, top_p=0.9)
    peak = matmul_peak_tflops(args.device, torch.bfloat16, args.matmul_size)
    report: dict[str, Any] = {"benchmark": "gpu_capfilt", "machine": machine(), "device": args.device,
                              "bf16_matmul_tflops": peak, "settings": vars(args) | {"workdir": str(args.workdir),
                                                                                    "output": str(args.output)},
                              "presets": {}}
    for name in args.presets:
        workdir = args.workdir / name
        ckpt = make_blip_checkpoints(workdir / "checkpoints", name, image_size=384)
        config = load_checkpoint(ckpt["captioner"]).config
        tok = load_checkpoint(ckpt["captioner"]).tokenizer
        prompt = len(decoder_prefix(tok, settings.prompt, config.tokens))
        work = capfilt_flops(config, config, num_captions=1, prompt_tokens=prompt,
                             new_tokens=args.max_length - prompt, itm_tokens=args.max_length)
        bound = peak * 1e12 / work.total
        entry: dict[str, Any] = {"gflop_per_image": work.total / 1e9, "bound_images_per_second": bound, "capfilt": []}
        for batch in args.batch_sizes:
            rate = capfilt_rate(ckpt, args.device, batch, args.images, settings, args.repeats)
            rate["share_of_bound"] = rate["images_per_second"] / bound
            entry["capfilt"].append(rate)
            print(f"{name} batch {batch}: {rate['images_per_second']:.1f} images/s "
                  f"({100 * rate['share_of_bound']:.0f} % of the bound)", flush=True)
        entry["plain"] = plain_rate(ckpt, workdir, args.device, args.plain_images, settings)
        best = max(r["images_per_second"] for r in entry["capfilt"])
        entry["best_images_per_second"] = best
        if entry["plain"]["images_per_second"]:
            entry["speedup_over_plain"] = best / entry["plain"]["images_per_second"]
        print(f"{name}: plain loop {entry['plain']['images_per_second']:.2f} images/s", flush=True)
        report["presets"][name] = entry
    report["total_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
