"""One Markdown page from the JSON that `make bench` writes (benchmarks/results/bench_summary.md).

    python -m benchmarks.summary [--results benchmarks/results] [--output benchmarks/results/bench_summary.md]

Reads bootstrap_vs_transformers*.json, model_levers.json and precision_parity.json where present;
absolute figures are printed with their machine, ratios beside the issue's goals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _peaks(peak: dict[str, Any]) -> str:
    """'1 thread X GFLOP/s fp32, Y bf16; 2 threads ...', bf16 left out where it was not measured."""
    def one(key: str) -> str:
        rates = [f"{peak[key][dtype]['gflops']} {dtype}" for dtype in ("fp32", "bf16") if peak[key][dtype]["gflops"]]
        return ", ".join(rates)
    text = f"1 thread {one('1_thread')}; 2 threads {one('2_threads')} (GFLOP/s)"
    if not peak["1_thread"]["bf16"]["gflops"]:
        text += "; bf16 not measured: this CPU has no native bf16"
    return text


def bootstrap_section(data: dict[str, Any]) -> list[str]:
    s, m, st = data["summary"], data["machine"], data["settings"]
    peak = data["peak"]
    extra = f" with `{st['capfilt_args']}`" if st.get("capfilt_args") else ""
    lines = [f"## capfilt bootstrap{extra} vs the plain transformers loop", "",
             f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers {m['transformers']}, "
             f"ray {m['ray']}; {m['date']}. {st['model']}; top-p {st['top_p']}, max length {st['max_length']}, "
             f"1 caption per image; capfilt batch {st['batch_size']}, model stages {st.get('model_stages', 'split')}, "
             f"precision {st['precision']} "
             f"(ran {st['resolved_dtype']}). Matmul peak in this run: {_peaks(peak)}.", "",
             "| images | repeats | capfilt s | plain loop s | speedup | goal |", "|---|---|---|---|---|---|"]
    goals = {32: ">= 2x", 256: ">= 3x"}
    for n in sorted(int(k) for k in data["runs"]):
        r = s[str(n)]
        lines.append(f"| {n} | {r['repeats']} | {_f(r['capfilt_seconds'], 1)} | {_f(r['plain_seconds'], 1)} | "
                     f"{_f(r['speedup'])}x | {goals.get(n, '')} |")
    if data.get("notes"):
        lines += ["", f"Note: {data['notes']}"]
    lines += ["", f"Bound ({s['dtype']}, 2 threads, {_f(data['work']['capfilt_gflop_per_image']['total'], 0)} GFLOP "
                  f"per image): {_f(s['bound_images_per_second'])} images/s."]
    big = str(max(int(k) for k in data["runs"]))
    if s[big].get("capfilt_steady_images_per_second"):
        lines.append(f"capfilt steady state at {big} images (progress 10-90 %): "
                     f"{_f(s[big]['capfilt_steady_images_per_second'])} images/s = "
                     f"{_f(100 * s[big]['steady_share_of_bound'], 0)} % of the bound (goal >= 50 %).")
    if "capfilt_marginal_images_per_second" in s:
        lines.append(f"Marginal rate between the sizes: capfilt {_f(s['capfilt_marginal_images_per_second'])} "
                     f"images/s ({_f(100 * s['marginal_share_of_bound'], 0)} % of the bound), plain loop "
                     f"{_f(s['plain_marginal_images_per_second'])}; start-up (intercept): capfilt "
                     f"{_f(s['capfilt_startup_seconds'], 1)} s, plain loop {_f(s['plain_startup_seconds'], 1)} s.")
    lines += ["", "| stage | GFLOP/image | busy s | GFLOP/s (1 actor) | share of 1-thread peak |", "|---|---|---|---|---|"]
    for name in ("caption", "filter"):
        st_ = s[big]["stages"][name]
        share = st_["share_of_1_thread_peak"]
        lines.append(f"| {name} | {_f(data['work']['capfilt_gflop_per_image'][name], 1)} | {_f(st_['busy_seconds'], 1)} | "
                     f"{_f(st_['gflops_per_second'], 1)} | {_f(share and 100 * share, 0)} % |")
    return lines + [""]


def levers_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Model levers (one thread, BLIP-base at 384 px, " + f"{data['images']} images, "
             f"median of {data['repeats']}, interleaved)", "",
             "Speedup = A's time / B's, wall clock and CPU time (one thread: CPU time is what the process computed, "
             "less disturbed by other load); share of peak from CPU time.", "",
             "| lever | A s | B s | speedup (wall) | speedup (CPU) | B's share of 1-thread peak |", "|---|---|---|---|---|---|"]
    if data.get("skipped"):
        lines[2:2] = [f"On {data['machine']['cpu']}: {data['skipped']}", ""]
    for key, (a, b) in {"filter_shared_kv_fp32": ("per_caption_kv", "shared_kv"),
                        "filter_shared_kv_bf16": ("per_caption_kv", "shared_kv"),
                        "precision_caption": ("fp32", "bf16"), "precision_filter": ("fp32", "bf16"),
                        "vit_attention_fp32": ("eager", "fused"), "vit_attention_bf16": ("eager", "fused"),
                        "decode_cache": ("transformers_cache", "static_cache")}.items():
        if key in data:
            d = data[key]
            share = d[b]["share_of_1_thread_peak"]
            label = f"{key} ({d['images']} images)" if "images" in d else key
            lines.append(f"| {label}: {a} -> {b} | {_f(d[a]['median_seconds'])} | {_f(d[b]['median_seconds'])} | "
                         f"{_f(d['speedup'])}x | {_f(d['speedup_cpu'])}x | {_f(share and 100 * share, 0)} % |")
    if "load_unfilled" in data:
        d = data["load_unfilled"]
        lines.append(f"| load_checkpoint: random init -> unfilled | {_f(d['random_init']['median_seconds'])} | "
                     f"{_f(d['unfilled']['median_seconds'])} | {_f(d['speedup'])}x | {_f(d['speedup_cpu'])}x | |")
    return lines + [""]


def parity_section(data: dict[str, Any]) -> list[str]:
    if data.get("skipped"):
        return ["## bf16 parity with float32", "", f"On {data['machine']['cpu']}: {data['skipped']}", ""]
    lm, itm, spread = data["lm"], data["itm"], data["itm_spread_head"]
    out = ["## bf16 parity with float32 (BLIP-base shapes, random weights)", "",
            f"- ITM: max |dp| {_f(itm['max_abs_dp'], 4)} (tolerance {data['tolerances']['itm_abs_dp']}); with a head "
            f"whose probabilities span {_f(spread['p_range_fp32'][0])}-{_f(spread['p_range_fp32'][1])}: max |dp| "
            f"{_f(spread['max_abs_dp'], 4)}, mean {_f(spread['mean_abs_dp'], 4)}.",
            f"- Captions, teacher-forced over {lm['positions']} positions: mean total variation "
            f"{_f(lm['mean_tv'], 4)} (tolerance {data['tolerances']['lm_mean_tv']}), top-1 agreement "
            f"{_f(100 * lm['top1_agreement'], 1)} %, logit RMS error {_f(100 * lm['logit_rms_error_over_std'], 1)} % "
            "of the logits' spread."]
    if "lm_cached" in data:
        cached = data["lm_cached"]
        out.append(f"- The same positions in bf16 through the static-cache decoder that captioning runs: mean total "
                   f"variation {_f(cached['mean_tv'], 4)}, top-1 agreement {_f(100 * cached['top1_agreement'], 1)} %.")
    return out + [""]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bench_summary.md"))
    args = parser.parse_args(argv)
    lines = ["# make bench", ""]
    for path in sorted(args.results.glob("bootstrap_vs_transformers*.json")):
        lines += bootstrap_section(json.loads(path.read_text()))
    for name, section in (("model_levers", levers_section), ("precision_parity", parity_section)):
        path = args.results / f"{name}.json"
        if path.is_file():
            lines += section(json.loads(path.read_text()))
    args.output.write_text("\n".join(lines))
    print(args.output.read_text())
    return args.output


if __name__ == "__main__":
    main()
