"""The caption checker: does a caption state only true facts about a scene?

It parses any text back into the grammar's structures (after normalising case, punctuation and
the spacing that WordPiece detokenisation leaves) and judges each clause with `grammar.holds`.
A caption outside the grammar is reported as not parsed, and so not true: this is what measures
the noise ratio of captions written by a model, as BLIP measures its synthetic captions'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capfilt.world.grammar import (
    GENERIC_NOUNS, NUMBERS, PLACE_PHRASES, RELATION_PHRASES, Caption, Clause, NounPhrase,
    clause_holds, clause_text,
)
from capfilt.world.scene import COLOURS, SHAPES, Scene

SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
DIGITS = {"1": "one", "2": "two", "3": "three"}
PREFIX_WORDS = (
    ("there", "is"), ("there", "are"), ("this", "is"), ("i", "see"), ("we", "see"),
    *((det, noun, "of") for det in ("a", "an") for noun in ("picture", "image", "photo", "drawing", "illustration")),
)


def _noun_table() -> dict[str, tuple[str | None, str]]:
    table: dict[str, tuple[str | None, str]] = {}
    for shape in SHAPES:
        table[shape] = (shape, "object")
        table[shape + ("es" if shape.endswith("s") else "s")] = (shape, "object")
    for noun in GENERIC_NOUNS:
        table[noun] = (None, noun)
        table[noun + "s"] = (None, noun)
    return table


NOUNS = _noun_table()
# Longest phrases first, so "on the left side" wins over "on the left".
PLACE_TOKENS = sorted(((tuple(p.split()), place) for place, forms in PLACE_PHRASES.items() for p in forms),
                      key=lambda t: -len(t[0]))
RELATION_TOKENS = sorted(((tuple(p.split()), rel) for rel, forms in RELATION_PHRASES.items() for p in forms),
                         key=lambda t: -len(t[0]))


@dataclass(frozen=True)
class Fact:
    text: str
    true: bool


@dataclass(frozen=True)
class CheckResult:
    parsed: bool
    true: bool  # parsed and every fact true
    facts: tuple[Fact, ...] = ()
    reason: str = ""

    def __bool__(self) -> bool:
        return self.true


def normalise(text: str) -> list[str]:
    """Lowercase words: WordPiece '##' joined, punctuation and hyphens gone, spaces collapsed."""
    text = text.lower().replace(" ##", "").replace("##", "")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return text.split()


class _Parser:
    def __init__(self, tokens: list[str]):
        self.t = tokens
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def match(self, words: tuple[str, ...]) -> bool:
        return tuple(self.t[self.i:self.i + len(words)]) == words

    def noun_phrase(self) -> NounPhrase | None:
        quant = "a"
        w = self.peek()
        if w in ("a", "an", "the"):
            self.i += 1
        elif w is not None and (w in NUMBERS or w in DIGITS):
            quant = DIGITS.get(w, w)
            self.i += 1
        size = colour = None
        while True:  # size and colour in either order, each at most once
            w = self.peek()
            if w in SIZE_WORDS and size is None:
                size = SIZE_WORDS[w]
            elif w in COLOURS and colour is None:
                colour = w
            else:
                break
            self.i += 1
        w = self.peek()
        if w not in NOUNS:
            return None
        shape, noun = NOUNS[w]
        self.i += 1
        place = None
        for words, p in PLACE_TOKENS:
            # "on the left of ..." is a relation, not a place
            if self.match(words) and (self.peek(len(words)) != "of"):
                place = p
                self.i += len(words)
                break
        return NounPhrase(quant=quant, size=size, colour=colour, shape=shape, place=place, noun=noun)

    def clause(self) -> Clause | None:
        subject = self.noun_phrase()
        if subject is None:
            return None
        for words, rel in RELATION_TOKENS:
            if self.match(words):
                self.i += len(words)
                obj = self.noun_phrase()
                return None if obj is None else Clause(subject, rel, obj)
        return Clause(subject)

    def caption(self) -> Caption | None:
        clauses = []
        while True:
            c = self.clause()
            if c is None:
                return None
            clauses.append(c)
            if self.peek() == "and":
                self.i += 1
                continue
            break
        return Caption(tuple(clauses)) if self.i == len(self.t) else None


def parse(text: str) -> Caption | None:
    """The caption's structure, or None if it is not in the grammar."""
    tokens = normalise(text)
    if not tokens:
        return None
    starts = [0] + [len(p) for p in PREFIX_WORDS if tuple(tokens[:len(p)]) == p]
    for start in sorted(set(starts), reverse=True):  # with a prefix first, then without
        result = _Parser(tokens[start:]).caption()
        if result is not None:
            return result
    return None


def check(scene: Scene, caption: str) -> CheckResult:
    """Whether every fact `caption` states is true of `scene`."""
    parsed = parse(caption)
    if parsed is None:
        return CheckResult(parsed=False, true=False, reason="not in the grammar")
    facts = tuple(Fact(clause_text(c, 0), clause_holds(scene, c)) for c in parsed.clauses)
    false = [f.text for f in facts if not f.true]
    return CheckResult(parsed=True, true=not false, facts=facts,
                       reason=("false: " + "; ".join(false)) if false else "")
