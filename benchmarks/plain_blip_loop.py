"""The plain transformers loop that benchmarks/bootstrap_vs_transformers.py measures capfilt against.

What a user would write first, following transformers' BLIP docs: for each row of the input,
fetch the image, preprocess it with the checkpoint's BlipImageProcessor, one
`BlipForConditionalGeneration.generate` call (nucleus sampling, the prompt "a picture of"), then
one `BlipForImageTextRetrieval` call per caption (the web one and the synthetic one), each of
which runs its own ViT pass. One image at a time, torch's default threads, float32.

    python -m benchmarks.plain_blip_loop --input in.parquet --captioner C --filter F --report out.json

The report holds the seconds from the start of main() to the models loaded and to each image
done, so the parent can take the whole-process time at any image count (the loop is sequential:
its time to image n is the wall time of a run over the first n rows, less process exit).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--captioner", type=Path, required=True)
    parser.add_argument("--filter", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--min-length", type=int, default=10)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)  # BLIP's for sampling
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the same loop on a GPU (float32 as well)")
    args = parser.parse_args(argv)

    rows = pq.read_table(args.input).to_pylist()
    processor = BlipImageProcessorPil.from_pretrained(args.captioner)
    tokenizer = AutoTokenizer.from_pretrained(args.captioner)
    captioner = BlipForConditionalGeneration.from_pretrained(args.captioner).eval().to(args.device)
    scorer = BlipForImageTextRetrieval.from_pretrained(args.filter).eval().to(args.device)
    loaded = time.perf_counter() - start
    torch.manual_seed(args.seed)
    prompt = tokenizer("a picture of", return_tensors="pt").to(args.device)
    done: list[float] = []
    results = []
    with torch.inference_mode():
        for row in rows:
            with urllib.request.urlopen(row["url"], timeout=30) as response:
                image = Image.open(io.BytesIO(response.read())).convert("RGB")
            pixel_values = processor(images=image, return_tensors="pt").pixel_values.to(args.device)
            ids = captioner.generate(pixel_values=pixel_values, input_ids=prompt.input_ids,
                                     attention_mask=prompt.attention_mask, do_sample=True, top_p=args.top_p,
                                     max_length=args.max_length, min_length=args.min_length,
                                     repetition_penalty=args.repetition_penalty)
            caption = tokenizer.decode(ids[0].cpu(), skip_special_tokens=True)
            scores = []
            for text in (row["caption"], caption):
                enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=35).to(args.device)
                logits = scorer(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                pixel_values=pixel_values).itm_score
                scores.append(float(logits.softmax(dim=-1)[0, 1]))
            results.append({"key": row["key"], "caption": caption, "itm": scores,
                            "caption_tokens": int(ids.shape[1])})
            done.append(time.perf_counter() - start)
    report = {"rows": len(rows), "load_seconds": loaded, "seconds_at_image": done,
              "torch_threads": torch.get_num_threads(), "results": results}
    args.report.write_text(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
