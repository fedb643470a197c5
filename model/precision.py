"""Inference precision: float32, or bfloat16 weights and activations where the hardware has fast
bf16 arithmetic.

bf16 weights (the module cast once) rather than autocast: autocast re-casts every weight at every
call, and a decode step is one call per token, so it would read the float32 weights and write a
bf16 copy 20 times per caption. What stays float: the pixels come in as float32 and are cast by
MED.encode_image; logits are turned to float before softmax and sampling (model.generation,
model.scoring), so sampling and the ITM probability are computed in float32/float64.

"auto" picks bf16 where it is fast: a CUDA device that supports it, or a CPU with AVX512-BF16 or
AMX (matmuls ~2.2x the float32 rate on an EPYC with AVX512-BF16, see benchmarks/results). On a
CPU without them PyTorch emulates bf16, which is slower than float32, so "auto" keeps float32.
The parity of bf16 with float32 (ITM probabilities, caption token draws) is measured by
benchmarks/precision_parity.py.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively (faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def inference_dtype(precision: Precision, device: str | torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    return DTYPES[precision]


def cast_for_inference(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module's floating-point weights and buffers in `dtype`, in place (shared weights stay
    shared: each Parameter is converted once), in eval mode. Not for training."""
    return module.to(dtype=dtype).eval()


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
