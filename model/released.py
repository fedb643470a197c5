"""BLIP's released weights as named presets: `--captioner blip-large --filter blip-itm-large`.

Two families, both data (model/hub.py resolves a name to files):
  - transformers' conversions on the hub (Salesforce/blip-image-captioning-*, blip-itm-*);
  - salesforce/BLIP's own model-zoo `.pth` files, fetched from their URL on first use. They hold
    no tokenizer: BLIP's (bert-base-uncased + [DEC] + [ENC]) is taken from the hub repo named in
    `tokenizer_from`, which ships the same vocabulary.

Every one was trained and evaluated at `image_size` with BLIP's test transform: resize the whole
image to S x S (bicubic, no crop), scale to [0, 1], CLIP mean/std (BLIP's data/__init__.py, and
transformers' BlipImageProcessor). That is what model/preprocess.py does at the checkpoint's size.

Which ones BLIP's CapFilt used: the paper's captioner is the pre-trained MED fine-tuned on COCO
with the LM loss, its filter the pre-trained MED fine-tuned on COCO with ITC+ITM (the maintainer
in salesforce/BLIP#10, #86). Those exact CapFilt models were never released (salesforce/BLIP#94);
the nearest released weights are the COCO caption fine-tunes and the COCO retrieval fine-tunes'
ITM heads below, ViT-L for the paper's best bootstrapped data (CapFilt-L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model.config import CLIP_MEAN, CLIP_STD

Role = Literal["captioner", "filter", "pretrained"]

_ZOO = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
BLIP_TEST_TRANSFORM = "resize to SxS (bicubic, no crop), [0, 1], CLIP mean/std"
_TRAIN_FINETUNE = "RandomResizedCrop(scale 0.5-1, bicubic) + flip + RandAugment(2, 5)"
_TRAIN_PRETRAIN = "RandomResizedCrop(scale 0.2-1, bicubic) + flip + RandAugment(2, 5)"


@dataclass(frozen=True)
class ReleasedWeights:
    name: str
    role: Role
    vit: Literal["base", "large"]
    source: str                    # a hub repo id, or the URL of a .pth
    image_size: int
    trained_on: str
    train_transform: str
    tokenizer_from: str | None = None  # hub repo whose tokenizer a .pth is paired with
    note: str = ""
    test_transform: str = BLIP_TEST_TRANSFORM
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def is_pth(self) -> bool:
        return self.source.endswith(".pth")


_TOK_BASE = "Salesforce/blip-image-captioning-base"
_TOK_LARGE = "Salesforce/blip-image-captioning-large"

_TABLE = [
    # -- transformers conversions on the hub ------------------------------------------------
    ReleasedWeights("blip-base", "captioner", "base", "Salesforce/blip-image-captioning-base", 384,
                    "COCO caption fine-tune", _TRAIN_FINETUNE),
    ReleasedWeights("blip-large", "captioner", "large", "Salesforce/blip-image-captioning-large", 384,
                    "COCO caption fine-tune", _TRAIN_FINETUNE,
                    note="ViT-L: the size of CapFilt-L's captioner"),
    ReleasedWeights("blip-itm-base", "filter", "base", "Salesforce/blip-itm-base-coco", 384,
                    "COCO retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE),
    ReleasedWeights("blip-itm-large", "filter", "large", "Salesforce/blip-itm-large-coco", 384,
                    "COCO retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE,
                    note="ViT-L: the size of CapFilt-L's filter"),
    ReleasedWeights("blip-itm-base-flickr", "filter", "base", "Salesforce/blip-itm-base-flickr", 384,
                    "Flickr30k retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE),
    ReleasedWeights("blip-itm-large-flickr", "filter", "large", "Salesforce/blip-itm-large-flickr", 384,
                    "Flickr30k retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE),
    # -- salesforce/BLIP's model zoo (.pth) ---------------------------------------------------
    ReleasedWeights("blip-pth-caption-base", "captioner", "base", _ZOO + "model_base_caption_capfilt_large.pth", 384,
                    "129M pre-train (CapFilt-L data), COCO caption fine-tune", _TRAIN_FINETUNE, _TOK_BASE),
    ReleasedWeights("blip-pth-caption-large", "captioner", "large", _ZOO + "model_large_caption.pth", 384,
                    "129M pre-train, COCO caption fine-tune", _TRAIN_FINETUNE, _TOK_LARGE),
    ReleasedWeights("blip-pth-itm-base", "filter", "base", _ZOO + "model_base_retrieval_coco.pth", 384,
                    "129M pre-train, COCO retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE, _TOK_BASE),
    ReleasedWeights("blip-pth-itm-large", "filter", "large", _ZOO + "model_large_retrieval_coco.pth", 384,
                    "129M pre-train, COCO retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE, _TOK_LARGE),
    ReleasedWeights("blip-pth-itm-base-flickr", "filter", "base", _ZOO + "model_base_retrieval_flickr.pth", 384,
                    "129M pre-train, Flickr30k retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE, _TOK_BASE),
    ReleasedWeights("blip-pth-itm-large-flickr", "filter", "large", _ZOO + "model_large_retrieval_flickr.pth", 384,
                    "129M pre-train, Flickr30k retrieval fine-tune (ITC+ITM)", _TRAIN_FINETUNE, _TOK_LARGE),
    ReleasedWeights("blip-pth-pretrain-base-14m", "pretrained", "base", _ZOO + "model_base_14M.pth", 224,
                    "14M pre-train (ITC+ITM+LM)", _TRAIN_PRETRAIN, _TOK_BASE),
    ReleasedWeights("blip-pth-pretrain-base", "pretrained", "base", _ZOO + "model_base.pth", 224,
                    "129M pre-train", _TRAIN_PRETRAIN, _TOK_BASE),
    ReleasedWeights("blip-pth-pretrain-base-capfilt-large", "pretrained", "base",
                    _ZOO + "model_base_capfilt_large.pth", 224,
                    "129M pre-train on CapFilt-L bootstrapped data", _TRAIN_PRETRAIN, _TOK_BASE),
    ReleasedWeights("blip-pth-pretrain-large", "pretrained", "large", _ZOO + "model_large.pth", 224,
                    "129M pre-train", _TRAIN_PRETRAIN, _TOK_LARGE),
]

RELEASED: dict[str, ReleasedWeights] = {w.name: w for w in _TABLE}

# What `--captioner blip-large --filter blip-itm-large` stands for: the nearest released
# counterparts of BLIP's CapFilt-L (see the module docstring).
CAPFILT_NEAREST = {"captioner": "blip-large", "filter": "blip-itm-large"}
