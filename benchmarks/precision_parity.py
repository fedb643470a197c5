"""bf16 against float32 at BLIP-base shapes (384 px): the parity behind `--precision auto`.

    python -m benchmarks.precision_parity --images 8 --output benchmarks/results/precision_parity.json

On the random-weight transformers checkpoints of benchmarks/random_blip.py (no trained BLIP can
be fetched here), the same images and texts through the float32 and the bf16 model:
  ITM   the "matched" probability, |p_bf16 - p_fp32| (max, mean), and the error of the logit
        difference relative to its spread over the pairs (scale-free: it carries over to a
        trained head, whose logits are larger, to first order); also with the ITM head pointed
        along the pairs' main direction of variation so that probabilities span (0, 1), as a
        trained filter's do;
  LM    teacher-forced over float32's own nucleus captions: total variation distance between the
        next-token distributions (the least chance, over couplings, that a draw differs), top-1
        agreement, and the logits' RMS error relative to their spread; again ("lm_cached") with the
        bf16 logits from the static-cache decoder that captioning runs (model/decode_cache.py).
Tolerances (the tests' on a small model; stated here for base): ITM |dp| <= 0.02, mean TV <= 0.06.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.machine import machine
from benchmarks.random_blip import make_blip_checkpoints
from model.checkpoint import load_checkpoint
from model.decode_cache import StaticCacheDecoder
from model.generation import GenerationSettings, generate_captions
from model.precision import cast_for_inference, fast_bf16

ITM_TOL, TV_TOL = 0.02, 0.06
WEB = ["a red circle on the left", "two dogs sitting on the grass", "a car on a street near a house",
       "a small blue star at the top", "a man and a woman next to a table", "the sky over the water"]


def itm_figures(logits32: torch.Tensor, logits16: torch.Tensor) -> dict:
    p32, p16 = logits32.softmax(-1)[:, 1], logits16.softmax(-1)[:, 1]
    d32, d16 = logits32[:, 1] - logits32[:, 0], logits16[:, 1] - logits16[:, 0]
    return {"pairs": int(p32.numel()), "max_abs_dp": float((p32 - p16).abs().max()),
            "mean_abs_dp": float((p32 - p16).abs().mean()), "p_range_fp32": [float(p32.min()), float(p32.max())],
            "logit_diff_error_over_spread": float((d32 - d16).abs().max() / d32.std().clamp_min(1e-12)),
            "within_tolerance": bool((p32 - p16).abs().max() <= ITM_TOL)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-work"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/precision_parity.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not fast_bf16("cpu"):  # auto runs float32 here, and emulated bf16 would take the better part of an hour
        report = {"benchmark": "precision_parity", "machine": machine(),
                  "skipped": "not measured: this CPU has no native bf16 (AVX512-BF16 or AMX), so `--precision auto` "
                             "runs float32 and there is no bf16 result to check"}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(report["skipped"])
        return report
    ckpt = make_blip_checkpoints(args.workdir / "checkpoints", "base", image_size=384)
    cap32, filt32 = (load_checkpoint(ckpt[r]) for r in ("captioner", "filter"))
    cap16, filt16 = (cast_for_inference(load_checkpoint(ckpt[r]).med, torch.bfloat16) for r in ("captioner", "filter"))
    tok, cfg = cap32.tokenizer, cap32.config
    n = args.images
    images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    settings = GenerationSettings(max_length=20, top_p=0.9)
    report: dict = {"benchmark": "precision_parity", "machine": machine(), "images": n, "shapes": "BLIP-base at 384 px, random weights",
                    "tolerances": {"itm_abs_dp": ITM_TOL, "lm_mean_tv": TV_TOL}}
    with torch.inference_mode():
        captions = [c for row in generate_captions(cap32.med, tok, images, list(range(n)), settings) for c in row]
        ids, mask = tok.encode(captions, 20)
        lm = [m.lm_logits(ids, mask, m.encode_image(images)).float()[mask.bool()] for m in (cap32.med, cap16)]
        probs = [x.softmax(-1) for x in lm]
        tv = 0.5 * (probs[0] - probs[1]).abs().sum(-1)
        report["lm"] = {"positions": int(tv.numel()), "mean_tv": float(tv.mean()), "max_tv": float(tv.max()),
                        "top1_agreement": float((lm[0].argmax(-1) == lm[1].argmax(-1)).float().mean()),
                        "logit_rms_error_over_std": float((lm[0] - lm[1]).pow(2).mean().sqrt() / lm[0].std()),
                        "fp32_mean_top1_probability": float(probs[0].max(-1).values.mean()),
                        "within_tolerance": bool(tv.mean() <= TV_TOL)}
        # the same teacher-forced positions through what captioning runs: bf16 over the static cache
        seqs = ids.clone()
        seqs[:, 0] = cfg.tokens.dec
        decoder = StaticCacheDecoder(cap16, cap16.encode_image(images), [cfg.tokens.dec], 1, ids.shape[1])
        steps = [decoder.first_logits] + [decoder.next_logits(seqs, cur, first=False) for cur in range(2, ids.shape[1] + 1)]
        cached = torch.stack(steps, 1)[mask.bool()]
        tv_cached = 0.5 * (probs[0] - cached.softmax(-1)).abs().sum(-1)
        report["lm_cached"] = {"positions": int(tv_cached.numel()), "mean_tv": float(tv_cached.mean()),
                               "max_tv": float(tv_cached.max()),
                               "top1_agreement": float((lm[0].argmax(-1) == cached.argmax(-1)).float().mean()),
                               "within_tolerance": bool(tv_cached.mean() <= TV_TOL)}
        # every text against every image: matched-looking and mismatched pairs alike
        texts = WEB + captions[: max(0, 12 - len(WEB))]
        owner = torch.arange(n).repeat_interleave(len(texts))
        tids, tmask = tok.encode(texts * n, cfg.max_text_len)
        embeds = {name: m.encode_image(images) for name, m in (("fp32", filt32.med), ("bf16", filt16))}
        logits = {name: m.itm_logits_grouped(tids, tmask, embeds[name], owner).float()
                  for name, m in (("fp32", filt32.med), ("bf16", filt16))}
        report["itm"] = itm_figures(logits["fp32"], logits["bf16"])
        # the same [ENC] outputs through a head whose probabilities spread over (0, 1)
        enc = {name: m.encode_multimodal(tids, tmask, embeds[name][owner])[:, 0, :].float()
               for name, m in (("fp32", filt32.med), ("bf16", filt16))}
        centred = enc["fp32"] - enc["fp32"].mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        scale = 2.0 / (centred @ direction).std()
        weight, bias = scale * direction, -(scale * direction) @ enc["fp32"].mean(0)
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the head in each model's arithmetic
        spread = {k: torch.stack([torch.zeros(len(v)), (v.to(dtypes[k]) @ weight.to(dtypes[k])
                                                        + bias.to(dtypes[k])).float()], 1) for k, v in enc.items()}
        report["itm_spread_head"] = itm_figures(spread["fp32"], spread["bf16"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("lm", "lm_cached", "itm", "itm_spread_head")}, indent=2))
    return report


if __name__ == "__main__":
    main()
