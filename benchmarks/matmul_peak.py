"""The machine's matmul rate, measured now: the peak that a stage's achieved FLOP/s is a share of.

Two shapes per dtype: a square 2048 x 2048 product (the PERFORMANCE.md reference) and the ViT's
MLP product at BLIP-base shapes (4 images x 577 tokens, 768 -> 3072); the peak is the faster of
the two. Each figure is the median of `repeats` timings after a warm-up. Run as a subprocess per
thread count, so that the thread pool is the one asked for:

    python -m benchmarks.matmul_peak --threads 1 --repeats 5   (prints JSON)

bf16 is measured only where the CPU computes it natively (model.precision.fast_bf16), or when
asked for (--bf16): elsewhere PyTorch emulates it at ~1.5 GFLOP/s (seen on an AVX2-only EPYC), so
the 20 GFLOP timings would take minutes each, and `--precision auto` runs float32 there anyway.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from model.precision import fast_bf16

SHAPES = {"square_2048": (2048, 2048, 2048), "vit_mlp_4x577": (4 * 577, 768, 3072)}


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    flops = 2.0 * m * k * n
    inner = max(1, int(2e10 // flops))  # ~20 GFLOP per timing: well above timer noise
    a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        rates.append(inner * flops / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


NOT_NATIVE = "not measured: this CPU has no native bf16 (AVX512-BF16 or AMX); PyTorch would emulate it"


def measure(threads: int, repeats: int, bf16: bool | None = None) -> dict:
    """{"threads", "fp32": {"gflops", "by_shape"}, "bf16": the same, or {"gflops": None, "skipped"}}.
    bf16=None: measured where the CPU has native bf16."""
    torch.set_num_threads(threads)
    out: dict = {"threads": threads}
    if bf16 is None:
        bf16 = fast_bf16("cpu")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not bf16:
            out[name] = {"gflops": None, "skipped": NOT_NATIVE}
            continue
        shapes = {shape: round(matmul_gflops(*dims, dtype, repeats), 1) for shape, dims in SHAPES.items()}
        out[name] = {"gflops": max(shapes.values()), "by_shape": shapes}
    return out


def measure_in_subprocess(threads: int, repeats: int = 5, bf16: bool = False) -> dict:
    """measure() in a fresh process; bf16=True measures bf16 even where it is emulated."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.matmul_peak", "--threads", str(threads),
                             "--repeats", str(repeats), *(["--bf16"] if bf16 else [])],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="measure bf16 even where this CPU emulates it")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.threads, args.repeats, True if args.bf16 else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
