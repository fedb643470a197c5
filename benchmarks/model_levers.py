"""Each model-side lever of the caption and filter stages, A against B in one process, at BLIP-base
shapes (384 px), one torch thread (what one stage actor gets on the 2-core machine).

    python -m benchmarks.model_levers --images 4 --repeats 3 --output benchmarks/results/model_levers.json

Levers, each timed interleaved (A, B, A, B, ...) on the same images, median of the repeats:
  filter_shared_kv   score_captions with each image's cross-attention K/V projected once for
                     its captions (web + K synthetic) vs once per caption; fp32 and bf16
  precision_caption  generate_captions in bf16 vs fp32 (nucleus, max length 20)
  precision_filter   score_captions in bf16 vs fp32 (shared K/V)
  vit_attention      the captioner's ViT (encode_image) with transformers' eager BlipAttention vs the
                     fused scaled_dot_product_attention (model.vision_attention); fp32 and bf16
  decode_cache       generate_captions over the static cache (model.decode_cache) vs transformers'
                     DynamicCache through MED.lm_logits, on --decode-images images (the graph's batch),
                     in the precision `--precision auto` picks on this CPU
  load_unfilled      load_checkpoint building the MED without random init vs with it
Each timing comes with its FLOPs (model.flops) and the achieved rate as a share of the 1-thread
matmul peak of its dtype, measured in the same run (benchmarks/matmul_peak.py).
On a CPU without native bf16 the bf16 levers are skipped (the JSON says so): PyTorch emulates
bf16 there some 40x slower than float32, and `--precision auto` never picks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers.models.blip.modeling_blip import BlipAttention

from benchmarks.matmul_peak import measure_in_subprocess
from benchmarks.machine import machine
from benchmarks.random_blip import make_blip_checkpoints
from model import generation
from model.checkpoint import load_checkpoint
from model.flops import capfilt_flops, vit_flops
from model.generation import GenerationSettings, decoder_prefix, generate_captions
from model.med import MED
from model.precision import cast_for_inference, fast_bf16
from model.vision_attention import FusedBlipAttention
from model.scoring import score_captions

WEB = "a red circle on the left near the top of the picture"


class TransformersCacheDecoder:
    """The baseline of the decode_cache lever: next-token logits through MED.lm_logits with
    transformers' DynamicCache (prefill once per image, the cache repeated to its rows, finished
    rows dropped with batch_select_indices), as model.generation decoded before its static cache."""

    def __init__(self, med: MED, image_embeds: torch.Tensor, prefix: list[int], rows_per_image: int):
        self.med = med
        self.embeds = image_embeds.repeat_interleave(rows_per_image, dim=0) if rows_per_image > 1 else image_embeds
        ids = torch.tensor([prefix]).expand(image_embeds.shape[0], -1)
        logits, self.cache = med.lm_logits(ids, torch.ones_like(ids), image_embeds, use_cache=True,
                                           replace_first=False, last_only=True)
        if rows_per_image > 1:
            self.cache.batch_repeat_interleave(rows_per_image)
        self.first_logits = logits[:, -1, :].float().repeat_interleave(rows_per_image, dim=0)

    def next_logits(self, seqs: torch.Tensor, cur_len: int, first: bool) -> torch.Tensor:
        if first:
            return self.first_logits
        mask = torch.ones(seqs.shape[0], cur_len, dtype=torch.long)
        logits, self.cache = self.med.lm_logits(seqs[:, cur_len - 1 : cur_len], mask, self.embeds,
                                                past_key_values=self.cache, use_cache=True, replace_first=False)
        return logits[:, -1, :].float()

    def keep_rows(self, index: torch.Tensor) -> None:
        self.embeds = self.embeds[index]
        self.cache.batch_select_indices(index)


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            start, cpu = time.perf_counter(), time.process_time()
            variants[name]()
            times[name].append(time.perf_counter() - start)
            times.setdefault(f"{name}_cpu", []).append(time.process_time() - cpu)
    return times


def lever(times: dict[str, list[float]], flops: dict[str, float], peaks: dict[str, float], dtypes: dict[str, str]) -> dict:
    """Wall and CPU seconds per variant; rates from the CPU seconds (one thread: the time the
    process computed, less sensitive than wall time to the other load on a shared machine)."""
    out: dict[str, Any] = {}
    names = [n for n in times if not n.endswith("_cpu")]
    for name in names:
        median, cpu = statistics.median(times[name]), statistics.median(times[f"{name}_cpu"])
        rate = flops[name] / cpu / 1e9 if flops.get(name) else None
        out[name] = {"seconds": times[name], "cpu_seconds": times[f"{name}_cpu"], "median_seconds": median,
                     "median_cpu_seconds": cpu, "gflops_per_cpu_second": rate,
                     "share_of_1_thread_peak": rate / peaks[dtypes[name]] if rate else None}
    a, b = names  # A the baseline, B the lever: speedup = A's time / B's
    out["speedup"] = out[a]["median_seconds"] / out[b]["median_seconds"]
    out["speedup_cpu"] = out[a]["median_cpu_seconds"] / out[b]["median_cpu_seconds"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--decode-images", type=int, default=8, help="the decode_cache lever's batch")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-work"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/model_levers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = make_blip_checkpoints(args.workdir / "checkpoints", "base", image_size=384)
    peak = measure_in_subprocess(1)
    peaks = {"fp32": peak["fp32"]["gflops"], "bf16": peak["bf16"]["gflops"]}
    dtypes = ("fp32", "bf16") if fast_bf16("cpu") else ("fp32",)
    auto = dtypes[-1]  # what `--precision auto` runs here

    cap, filt = load_checkpoint(ckpt["captioner"]), load_checkpoint(ckpt["filter"])
    tok, cfg = cap.tokenizer, cap.config
    models = {"fp32": (cap.med.eval(), filt.med.eval())}
    if "bf16" in dtypes:
        models["bf16"] = tuple(cast_for_inference(load_checkpoint(ckpt[r]).med, torch.bfloat16)
                               for r in ("captioner", "filter"))
    n = args.images
    images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    settings = GenerationSettings(max_length=args.max_length, top_p=0.9)
    prompt = len(decoder_prefix(tok, settings.prompt, cfg.tokens))
    with torch.inference_mode():
        synthetic = generate_captions(models["fp32"][0], tok, images, list(range(n)), settings)
    texts = [[WEB, *caps] for caps in synthetic]
    itm_tokens = int(tok.encode([t for row in texts for t in row], cfg.max_text_len)[0].shape[1])
    work = {shared: capfilt_flops(cfg, cfg, num_captions=1, prompt_tokens=prompt, new_tokens=args.max_length - prompt,
                                  itm_tokens=itm_tokens, shared_cross_kv=shared) for shared in (True, False)}
    caption_flops, filter_flops = n * work[True].caption, {s: n * w.filter for s, w in work.items()}

    def score(dtype: str, shared: bool) -> Callable[[], Any]:
        return lambda: score_captions(models[dtype][1], tok, images, texts, shared_cross_kv=shared)

    def caption(dtype: str) -> Callable[[], Any]:
        return lambda: generate_captions(models[dtype][0], tok, images, list(range(n)), settings)

    report: dict[str, Any] = {"benchmark": "model_levers", "machine": machine(), "images": n, "repeats": args.repeats,
                              "shapes": "BLIP-base at 384 px, random weights", "torch_threads": 1,
                              "peak_1_thread": peak, "itm_tokens": itm_tokens,
                              "gflop_per_image": {"caption": work[True].caption / 1e9,
                                                  "filter_shared_kv": work[True].filter / 1e9,
                                                  "filter_per_caption_kv": work[False].filter / 1e9}}
    if "bf16" not in dtypes:
        report["skipped"] = ("the bf16 levers (precision_*, *_bf16): this CPU has no native bf16 (AVX512-BF16 or AMX), "
                             "so `--precision auto` runs float32; decode_cache ran in float32")
    with torch.inference_mode():
        for dtype in dtypes:
            times = interleaved({"per_caption_kv": score(dtype, False), "shared_kv": score(dtype, True)}, args.repeats)
            report[f"filter_shared_kv_{dtype}"] = lever(
                times, {"per_caption_kv": filter_flops[False], "shared_kv": filter_flops[True]}, peaks,
                {"per_caption_kv": dtype, "shared_kv": dtype})
            print(f"filter shared K/V ({dtype}): x{report[f'filter_shared_kv_{dtype}']['speedup']:.2f}", flush=True)
    if "bf16" in dtypes:
        with torch.inference_mode():
            times = interleaved({"fp32": caption("fp32"), "bf16": caption("bf16")}, args.repeats)
            report["precision_caption"] = lever(times, {"fp32": caption_flops, "bf16": caption_flops}, peaks,
                                                {"fp32": "fp32", "bf16": "bf16"})
            print(f"caption bf16: x{report['precision_caption']['speedup']:.2f}", flush=True)  # noqa
            times = interleaved({"fp32": score("fp32", True), "bf16": score("bf16", True)}, args.repeats)
            report["precision_filter"] = lever(times, {"fp32": filter_flops[True], "bf16": filter_flops[True]}, peaks,
                                               {"fp32": "fp32", "bf16": "bf16"})
            print(f"filter bf16: x{report['precision_filter']['speedup']:.2f}", flush=True)

    def vit(dtype: str, attention: type) -> Callable[[], Any]:
        def run() -> Any:
            med = models[dtype][0]
            for module in med.vision.modules():
                if isinstance(module, BlipAttention):
                    module.__class__ = attention
            try:
                return med.encode_image(images)
            finally:
                for module in med.vision.modules():
                    if isinstance(module, BlipAttention):
                        module.__class__ = FusedBlipAttention
        return run

    with torch.inference_mode():
        for dtype in dtypes:
            times = interleaved({"eager": vit(dtype, BlipAttention), "fused": vit(dtype, FusedBlipAttention)},
                                args.repeats)
            report[f"vit_attention_{dtype}"] = lever(times, {"eager": n * vit_flops(cfg), "fused": n * vit_flops(cfg)},
                                                     peaks, {"eager": dtype, "fused": dtype})
            print(f"ViT fused attention ({dtype}): x{report[f'vit_attention_{dtype}']['speedup']:.2f}", flush=True)

    # decoding over transformers' DynamicCache (what generation did before model/decode_cache.py) against
    # the static cache, in the precision auto picks, on a batch of the graph's size: decode costs depend on the batch
    decode_images = torch.randn(args.decode_images, 3, cfg.image_size, cfg.image_size,
                                generator=torch.Generator().manual_seed(1))

    def decode(kind: str) -> Callable[[], Any]:
        def run() -> Any:
            original = generation._decoder
            if kind == "transformers_cache":
                generation._decoder = lambda med, embeds, prefix, k, _settings, _cache: TransformersCacheDecoder(
                    med, embeds, prefix, k)
            try:
                return generate_captions(models[auto][0], tok, decode_images, list(range(args.decode_images)), settings)
            finally:
                generation._decoder = original
        return run

    with torch.inference_mode():
        times = interleaved({"transformers_cache": decode("transformers_cache"), "static_cache": decode("static_cache")},
                            args.repeats)
        flops = args.decode_images * work[True].caption
        report["decode_cache"] = lever(times, {"transformers_cache": flops, "static_cache": flops}, peaks,
                                       {"transformers_cache": auto, "static_cache": auto})
        report["decode_cache"]["images"] = args.decode_images
        print(f"caption over the static cache: x{report['decode_cache']['speedup']:.2f}", flush=True)

    def load_filled() -> None:  # the loader as it was: random init drawn, then overwritten
        original = MED.unfilled
        MED.unfilled = classmethod(lambda cls, config, tie=True: cls(config, tie=tie))  # type: ignore[method-assign]
        try:
            load_checkpoint(ckpt["captioner"])
        finally:
            MED.unfilled = original  # type: ignore[method-assign]

    times = interleaved({"random_init": load_filled, "unfilled": lambda: load_checkpoint(ckpt["captioner"])}, args.repeats)
    report["load_unfilled"] = lever(times, {}, peaks, {})
    print(f"load unfilled: x{report['load_unfilled']['speedup']:.2f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
