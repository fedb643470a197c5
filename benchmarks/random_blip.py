"""Random-weight transformers BLIP checkpoints of a preset's shape, made on the spot (no hub here).

    captioner/  BlipForConditionalGeneration.save_pretrained + tokenizer + BlipImageProcessor config
    filter/     BlipForImageTextRetrieval, the same

Both load into capfilt (model.checkpoint.load_checkpoint) and into transformers (from_pretrained,
AutoTokenizer, BlipImageProcessor), as a real BLIP folder does. The tokenizer has BERT-base's
layout: 30522 WordPiece entries with [PAD] 0, [CLS] 101, [SEP] 102, [MASK] 103, then [DEC] 30522
and [ENC] 30523 as BLIP adds them; its words are a small caption vocabulary and filler pieces.
Weights are transformers' own init with the preset's range (0.02 at base), the ViT's too:
BlipVisionConfig's default 1e-10 would leave activations near denormal and time a path no
trained model takes.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from model.config import preset
from model.hf_interop import blip_config_from_med
from model.tokenizer import TextTokenizer

BERT_VOCAB = 30522
WORDS = ("a an the picture photo of on in at with and near by small big large tiny red green blue yellow black "
         "white orange purple grey brown circle square triangle star shape shapes object objects left right top "
         "bottom middle corner centre center background dog cat man woman child car tree house street table two "
         "three four several some is are sitting standing next to over under field sky water grass road").split()


def bert_layout_tokenizer() -> TextTokenizer:
    """A WordPiece tokenizer with bert-base-uncased's size and special ids, plus BLIP's [DEC], [ENC]."""
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    fillers = ("".join(p) for p in itertools.product(string.ascii_lowercase, repeat=4))
    while len(vocab) < BERT_VOCAB:
        word = next(fillers)
        if word not in vocab:
            vocab.append(word)
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")])
    text = TextTokenizer(tok)
    assert (text.ids.cls, text.ids.sep, text.ids.dec, text.ids.enc) == (101, 102, 30522, 30523), text.ids
    return text


def make_blip_checkpoints(out: Path, preset_name: str = "base", image_size: int = 384, seed: int = 0) -> dict[str, Path]:
    """captioner/ and filter/ under `out` (made once: existing folders are reused)."""
    tok = bert_layout_tokenizer()
    config = preset(preset_name, image_size=image_size, tokens=tok.ids, vocab_size=tok.vocab_size)
    blip = blip_config_from_med(config)
    paths = {"captioner": out / "captioner", "filter": out / "filter"}
    for offset, (role, cls) in enumerate((("captioner", BlipForConditionalGeneration),
                                          ("filter", BlipForImageTextRetrieval))):
        path = paths[role]
        if (path / "config.json").is_file():
            continue
        torch.manual_seed(seed + offset)
        model = cls(blip).eval()
        tmp = path.with_name(path.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save(tmp)
        BlipImageProcessorPil(size={"height": image_size, "width": image_size},
                              image_mean=list(config.image_mean), image_std=list(config.image_std)).save_pretrained(tmp)
        tmp.rename(path)
    return paths
