"""Run by a test with the OpenCLIP venv's Python (Makefile: .venv-openclip): OpenCLIP's own
WebDataset loader, `open_clip_train.data.get_wds_dataset`, over capfilt's tars, as `--train-data`
would use them. Prints one JSON object: every sample's text (decoded back from OpenCLIP's
tokens), the image batches' shapes, and what the tokenizer makes of the given captions, to
compare with."""

from __future__ import annotations

import argparse
import json
import sys

import torch

# PyPI's torchvision is a CUDA build: beside the CPU torch its C++ ops do not load, and two of its
# meta registrations need their schemas to import at all. OpenCLIP's loader never calls them.
_lib = torch.library.Library("torchvision", "DEF")
for _op in ("nms", "qnms"):
    try:
        _lib.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        pass  # the real ops loaded

import open_clip  # noqa: E402
from open_clip_train.data import get_wds_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards", help="brace pattern, e.g. out/webdataset/{00000..00004}.tar")
    parser.add_argument("num_samples", type=int)
    parser.add_argument("--captions", default="[]", help="JSON list of captions to tokenize and decode")
    args = parser.parse_args()
    loader_args = argparse.Namespace(val_data=args.shards, val_num_samples=args.num_samples, batch_size=4, workers=0,
                                     world_size=1, seed=0, train_data_upsampling_factors=None,
                                     dataset_resampled=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    preprocess = open_clip.image_transform(32, is_train=False)
    loader = get_wds_dataset(loader_args, preprocess, is_train=False, tokenizer=tokenizer).dataloader

    def text(tokens: torch.Tensor) -> str:
        return open_clip.decode(tokens).split("<end_of_text>")[0].replace("<start_of_text>", "").strip()

    shapes, texts = [], []
    for images, tokens in loader:
        shapes.append(list(images.shape))
        texts += [text(t) for t in tokens]
    expected = [text(tokenizer([c])[0]) for c in json.loads(args.captions)]
    json.dump({"texts": texts, "shapes": shapes, "expected": expected}, sys.stdout)


if __name__ == "__main__":
    main()
