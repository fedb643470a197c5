"""The MED's text tokenizer: BERT-uncased WordPiece with BLIP's [DEC] and [ENC] specials.

One class reads two kinds of folder, used as they come:
  - capfilt's own (what `save` writes: tokenizer.json + a BertTokenizer tokenizer_config.json +
    vocab.txt, so that the same folder also loads with transformers' AutoTokenizer/BlipProcessor);
  - a transformers BLIP checkpoint's (tokenizer.json, or vocab.txt plus the added tokens that
    tokenizer_config.json / added_tokens.json list: [DEC] as bos, [ENC] as an additional special).

The tokenizer lives outside the nn.Module (see STYLE.md); the MED only sees ids.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from model.config import TokenIds

# Order matters: a trained toy tokenizer gets ids 0..6 in this order, which the tiny preset's
# TokenIds (pad=0, cls=2, sep=3, dec=5, enc=6) assume.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
ADDED_TOKENS_FILE = "added_tokens.json"  # older transformers folders
SPECIAL_MAP_FILE = "special_tokens_map.json"  # older transformers folders


def _bert_pipeline(tok: Tokenizer, lowercase: bool = True) -> Tokenizer:
    """BERT's normaliser, pre-tokeniser and '##' decoder on a WordPiece `tok`."""
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


class TextTokenizer:
    """[CLS] text [SEP] encoding with BLIP's specials; see module docstring for the file formats."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        dec_token: str = "[DEC]",
        enc_token: str = "[ENC]",
        lowercase: bool = True,
    ):
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        names = {"pad": pad_token, "cls": cls_token, "sep": sep_token, "dec": dec_token, "enc": enc_token}
        found = {key: tokenizer.token_to_id(tok) for key, tok in names.items()}
        missing = [names[k] for k, v in found.items() if v is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing} that the MED needs")
        self.ids = TokenIds(**found)  # type: ignore[arg-type]
        self.token_names = names
        # Everything special is skipped on decode: BERT's five, BLIP's two, and added specials.
        specials = set(SPECIAL_TOKENS) | set(names.values())
        specials |= {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        self._special_ids = {i for i in (tokenizer.token_to_id(t) for t in specials) if i is not None}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encoding ----------------------------------------------------------------------------
    def _word_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] text [SEP] per text, truncated to `max_length` (keeping [SEP], as BERT's
        truncation does) and right-padded to the longest: (input_ids, attention_mask), (B, T)."""
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        rows = [[self.ids.cls, *self._word_ids(t)[: max_length - 2], self.ids.sep] for t in texts]
        width = max((len(r) for r in rows), default=2)
        input_ids = torch.full((len(rows), width), self.ids.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def encode_prompt(self, text: str) -> list[int]:
        """[CLS] prompt, without the trailing [SEP]: the decoder continues it (BLIP drops the
        prompt's [SEP] and puts [DEC] at position 0, which the MED's lm_logits does)."""
        return [self.ids.cls, *self._word_ids(text)]

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Specials skipped, '##' pieces joined to their word."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        kept = [int(i) for i in ids if int(i) not in self._special_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def decode_batch(self, batch: Iterable[Iterable[int]] | torch.Tensor) -> list[str]:
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        return [self.decode(row) for row in batch]

    # ---- files -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """tokenizer.json, vocab.txt and a BertTokenizer tokenizer_config.json (transformers
        reads the folder as BLIP's tokenizer: [DEC] bos, [ENC] additional special)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError("tokenizer ids are not contiguous; cannot write vocab.txt")
        (directory / VOCAB_FILE).write_text("".join(tok + "\n" for tok, _ in by_id), encoding="utf-8")
        n = self.token_names
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "pad_token": n["pad"], "cls_token": n["cls"], "sep_token": n["sep"],
            "unk_token": "[UNK]", "mask_token": "[MASK]",
            "bos_token": n["dec"], "additional_special_tokens": [n["enc"]],
            "model_max_length": 512,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "TextTokenizer":
        directory = Path(directory)
        config: dict = {}
        # Older folders name the specials in special_tokens_map.json; tokenizer_config.json wins.
        for path in (directory / SPECIAL_MAP_FILE, directory / CONFIG_FILE):
            if path.is_file():
                config.update(json.loads(path.read_text()))
        lowercase = bool(config.get("do_lower_case", True))
        if (directory / TOKENIZER_FILE).is_file():
            tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        elif (directory / VOCAB_FILE).is_file():
            tok = _from_vocab_txt(directory, config, lowercase)
        else:
            raise FileNotFoundError(f"{directory}: no {TOKENIZER_FILE} or {VOCAB_FILE}")

        def name(key: str, default: str) -> str:
            value = config.get(key, default)
            return value["content"] if isinstance(value, dict) else str(value)

        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        extra = [e["content"] if isinstance(e, dict) else str(e) for e in extra]
        return cls(
            tok,
            pad_token=name("pad_token", "[PAD]"), cls_token=name("cls_token", "[CLS]"),
            sep_token=name("sep_token", "[SEP]"), dec_token=name("bos_token", "[DEC]"),
            enc_token="[ENC]" if "[ENC]" in extra or not extra else extra[0],
            lowercase=lowercase,
        )


def _from_vocab_txt(directory: Path, config: dict, lowercase: bool) -> Tokenizer:
    """A WordPiece tokenizer from vocab.txt plus the added tokens listed beside it, each at the
    id the folder gives it (BLIP: [DEC] = 30522, [ENC] = 30523)."""
    lines = (directory / VOCAB_FILE).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {tok: i for i, tok in enumerate(lines)}
    tok = _bert_pipeline(Tokenizer(WordPiece(vocab, unk_token="[UNK]")), lowercase)
    added: dict[int, str] = {}
    for id_text, entry in (config.get("added_tokens_decoder") or {}).items():
        added[int(id_text)] = entry["content"] if isinstance(entry, dict) else str(entry)
    if (directory / ADDED_TOKENS_FILE).is_file():
        for content, i in json.loads((directory / ADDED_TOKENS_FILE).read_text()).items():
            added[int(i)] = content
    for i, content in sorted(added.items()):
        if vocab.get(content) == i:
            continue  # already in vocab.txt (BERT's own specials)
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        got = tok.token_to_id(content)
        if got != i:
            raise ValueError(f"{directory}: added token {content!r} should have id {i}, got {got}")
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 1) -> TextTokenizer:
    """A BERT-uncased WordPiece tokenizer for `texts`: the specials (ids 0..6, SPECIAL_TOKENS
    order), every character seen (alone and as a '##' piece, so that nothing made of them is
    [UNK]; only the most frequent if they would take over half the vocabulary), then whole
    words by frequency (ties alphabetical) until `vocab_size`.

    Why not `tokenizers`' WordPieceTrainer: it breaks ties between equally frequent pairs in hash
    order, so two runs on the same corpus give different vocabularies, and `model init --seed`
    could not reproduce a checkpoint. Normalising, pre-tokenising and the WordPiece model itself
    are `tokenizers`'. Words past the limit are spelt with the longest known pieces. The
    vocabulary may come out smaller than `vocab_size`; read `.vocab_size` afterwards.
    """
    probe = _bert_pipeline(Tokenizer(WordPiece({"[UNK]": 0}, unk_token="[UNK]")))
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = probe.normalizer.normalize_str(text)
        counts.update(word for word, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    char_counts: Counter[str] = Counter()
    for word, n in counts.items():
        for c in word:
            char_counts[c] += n
    # Like the trainer's limit_alphabet: on a corpus with more characters than fit (web text in
    # many scripts), the rarest become [UNK]; characters (each twice: "c" and "##c") take at
    # most half of the vocabulary beside the specials.
    max_chars = (vocab_size - len(SPECIAL_TOKENS)) // 4
    if max_chars < 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} specials")
    by_frequency = sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    chars = sorted(c for c, _ in by_frequency[:max_chars])
    vocab = [*SPECIAL_TOKENS, *chars, *("##" + c for c in chars)]
    known = set(vocab)
    words = sorted((w for w, n in counts.items() if n >= min_frequency and w not in known), key=lambda w: (-counts[w], w))
    vocab += words[: vocab_size - len(vocab)]
    tok = _bert_pipeline(Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")))
    # Registered as special so that they are never split, and skipped on decode.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return TextTokenizer(tok)
