"""The tokenizer: BERT-uncased [CLS] text [SEP], BLIP's specials, and both folder formats."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from model.config import PRESETS
from model.tokenizer import TextTokenizer, train_wordpiece

CORPUS = [
    "a small red circle on the left",
    "two big blue squares in the middle",
    "three green triangles near the top",
    "a large yellow star at the bottom right",
] * 10


@pytest.fixture(scope="module")
def toy() -> TextTokenizer:
    return train_wordpiece(CORPUS, vocab_size=300)


def test_trained_specials_match_tiny_preset(toy):
    assert toy.ids == PRESETS["tiny"].tokens
    assert toy.vocab_size <= 300


def test_training_is_deterministic_and_respects_the_limit():
    a, b = train_wordpiece(CORPUS, vocab_size=300), train_wordpiece(list(reversed(CORPUS)), vocab_size=300)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    words = [x + y + z for x in "abcd" for y in "abcd" for z in "abcd"]  # 64 words, 4 characters
    small = train_wordpiece([" ".join(words)], vocab_size=7 + 8 + 18)
    assert small.vocab_size == 33  # specials, a..d and ##a..##d, the first 18 words
    assert small.encode(["aab"], 8)[0].shape[1] == 3  # a whole word
    ids, _ = small.encode(["ddd"], 8)
    assert ids.shape[1] == 5 and small.decode(ids[0]) == "ddd"  # spelt in pieces, never [UNK]
    assert 1 not in ids[0].tolist()


def test_a_corpus_with_many_scripts_keeps_room_for_words():
    scripts = ["".join(chr(0x4E00 + i * 7 + j) for j in range(5)) for i in range(200)]  # 1000 CJK chars
    tok = train_wordpiece(CORPUS + scripts, vocab_size=300)
    assert tok.vocab_size == 300
    ids, _ = tok.encode(["three green triangles"], 32)
    assert ids.shape[1] == 5  # whole words, still


def test_encode_pads_truncates_and_lowercases(toy):
    ids, mask = toy.encode(["A SMALL Red circle", "two"], max_length=4)
    assert ids.dtype == torch.long and ids.shape == mask.shape == (2, 4)
    assert ids[0, 0] == toy.ids.cls and ids[0, -1] == toy.ids.sep  # truncation keeps [SEP]
    assert ids[1].tolist()[-1] == toy.ids.pad and mask[1].tolist() == [1, 1, 1, 0]
    assert toy.decode(ids[0]) == "a small"
    full, _ = toy.encode(["A SMALL Red circle"], max_length=32)
    assert toy.decode_batch(full) == ["a small red circle"]


def test_prompt_has_no_trailing_sep(toy):
    prompt = toy.encode_prompt("a picture of")
    assert prompt[0] == toy.ids.cls and toy.ids.sep not in prompt


def test_wordpiece_pieces_join_on_decode(toy):
    ids, _ = toy.encode(["redness"], max_length=16)  # not a corpus word: split into pieces
    assert ids.shape[1] > 3
    assert toy.decode(ids[0]) == "redness"


def test_save_load_round_trip_and_transformers_reads_it(toy, tmp_path):
    toy.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.ids == toy.ids and again.vocab_size == toy.vocab_size
    text = ["Three big stars near the top"]
    assert torch.equal(again.encode(text, 32)[0], toy.encode(text, 32)[0])
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf(text).input_ids[0] == toy.encode(text, 32)[0][0].tolist()
    assert hf.bos_token_id == toy.ids.dec


def _bert_vocab() -> list[str]:
    # bert-base-uncased's layout in miniature: [PAD], unused, [UNK] [CLS] [SEP] [MASK] at 100-103
    return ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                             "a", "small", "red", "circle", "##s"]


def test_loads_a_transformers_blip_tokenizer_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "vocab.txt").write_text("\n".join(_bert_vocab()) + "\n")
    hf = AutoTokenizer.from_pretrained(src, tokenizer_type="bert")
    # what BLIP's init_tokenizer does
    hf.add_special_tokens({"bos_token": "[DEC]"})
    hf.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    hf.save_pretrained(tmp_path / "blip")
    tok = TextTokenizer.load(tmp_path / "blip")
    assert (tok.ids.pad, tok.ids.cls, tok.ids.sep, tok.ids.dec, tok.ids.enc) == (0, 101, 102, 109, 110)
    text = ["A small red circles"]
    assert tok.encode(text, 16)[0][0].tolist() == hf(text).input_ids[0]


def test_loads_an_older_vocab_txt_folder(tmp_path):
    # transformers 4.x wrote vocab.txt + added tokens in tokenizer_config.json
    (tmp_path / "vocab.txt").write_text("\n".join(_bert_vocab()) + "\n")
    n = len(_bert_vocab())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"],
        "added_tokens_decoder": {str(n): {"content": "[DEC]", "special": True},
                                 str(n + 1): {"content": "[ENC]", "special": True}},
    }))
    tok = TextTokenizer.load(tmp_path)
    assert (tok.ids.dec, tok.ids.enc) == (n, n + 1) and tok.vocab_size == n + 2
    ids, _ = tok.encode(["A small red circles"], 16)
    assert ids[0].tolist() == [101, 104, 105, 106, 107, 108, 102]
    assert tok.decode(ids[0]) == "a small red circles"
