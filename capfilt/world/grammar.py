"""The caption grammar: a caption's structure, its words, its meaning, and how true captions and
one-attribute-wrong captions are made from a scene.

A caption is a conjunction of clauses; a clause is a noun phrase ("two small blue squares on the
left") or two noun phrases in a relation ("a red circle left of a green star"). Meaning:
- "a"/"an" (or no determiner): at least one object matches; "one"/"two"/"three": exactly that many;
- a noun phrase's attributes (size, colour, shape, place) must all hold of each matching object;
- a relation holds when some object matching the subject stands in it to another object
  matching the object phrase.
The checker parses text back into these structures; `holds` is the single place where truth is
defined.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from capfilt.world.scene import COLOURS, PLACES, RELATIONS, SHAPES, SIZES, Obj, Scene, cell_place, in_place, related

NUMBERS = {"one": 1, "two": 2, "three": 3}
NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}
GENERIC_NOUNS = ("object", "shape", "thing")

# Surface forms; the first of each list is the canonical one. Index chosen by `Caption.style`.
PLACE_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "middle": ("in the middle", "in the center", "in the centre"),
    **{p: (f"in the {p}", f"in the {p} corner", f"at the {p}")
       for p in ("top left", "top right", "bottom left", "bottom right")},
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
PREFIXES = ("", "there is", "a picture of", "an image of", "a photo of", "a drawing of")


@dataclass(frozen=True)
class NounPhrase:
    quant: str = "a"  # "a" (at least one) or "one" / "two" / "three" (exactly)
    size: str | None = None
    colour: str | None = None
    shape: str | None = None  # None: "object", "shape" or "thing"
    place: str | None = None
    noun: str = "object"  # the generic noun's word when shape is None

    def matches(self, obj: Obj) -> bool:
        return ((self.size is None or obj.size == self.size)
                and (self.colour is None or obj.colour == self.colour)
                and (self.shape is None or obj.shape == self.shape)
                and (self.place is None or in_place(obj, self.place)))

    def count_ok(self, n: int) -> bool:
        return n >= 1 if self.quant == "a" else n == NUMBERS[self.quant]


@dataclass(frozen=True)
class Clause:
    subject: NounPhrase
    relation: str | None = None
    obj: NounPhrase | None = None


@dataclass(frozen=True)
class Caption:
    clauses: tuple[Clause, ...]
    prefix: str = ""
    style: int = 0  # picks among paraphrases of places and relations


# ---------------------------------------------------------------- meaning

def clause_holds(scene: Scene, clause: Clause) -> bool:
    subjects = [o for o in scene.objects if clause.subject.matches(o)]
    if clause.relation is None:
        return clause.subject.count_ok(len(subjects))
    assert clause.obj is not None
    standing = 0
    for s in subjects:
        partners = [o for o in scene.objects if o is not s and clause.obj.matches(o) and related(s, clause.relation, o)]
        if clause.obj.count_ok(len(partners)):
            standing += 1
    return clause.subject.count_ok(standing)


def holds(scene: Scene, caption: Caption) -> bool:
    """Whether every fact the caption states is true of the scene."""
    return all(clause_holds(scene, c) for c in caption.clauses)


# ---------------------------------------------------------------- words

def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def np_text(np_: NounPhrase, style: int) -> str:
    words: list[str] = [w for w in (np_.size, np_.colour) if w]
    noun = np_.shape or np_.noun
    many = np_.quant in ("two", "three")
    words.append(_plural(noun) if many else noun)
    if np_.quant == "a":
        det = "an" if words[0][0] in "aeiou" else "a"
    else:
        det = np_.quant
    text = " ".join([det, *words])
    if np_.place:
        forms = PLACE_PHRASES[np_.place]
        text += " " + forms[style % len(forms)]
    return text


def clause_text(clause: Clause, style: int) -> str:
    text = np_text(clause.subject, style)
    if clause.relation is not None and clause.obj is not None:
        forms = RELATION_PHRASES[clause.relation]
        text += " " + forms[(style // 3) % len(forms)] + " " + np_text(clause.obj, style // 7)
    return text


def caption_text(caption: Caption) -> str:
    body = " and ".join(clause_text(c, caption.style) for c in caption.clauses)
    prefix = caption.prefix
    if prefix == "there is" and caption.clauses[0].subject.quant in ("two", "three"):
        prefix = "there are"
    return f"{prefix} {body}" if prefix else body


# ---------------------------------------------------------------- true captions

def _full_np(obj: Obj, *, place: bool, size: bool = True) -> NounPhrase:
    return NounPhrase(size=obj.size if size else None, colour=obj.colour, shape=obj.shape,
                      place=cell_place(obj.col, obj.row) if place else None)


def _single_object_caption(scene: Scene, rng: random.Random) -> tuple[Clause, ...]:
    obj = scene.objects[0]
    roll = rng.random()
    if roll < 0.55:
        np_ = _full_np(obj, place=True)
    elif roll < 0.75:
        np_ = _full_np(obj, place=False)
    elif roll < 0.9:
        np_ = _full_np(obj, place=True, size=False)
    else:
        np_ = replace(_full_np(obj, place=rng.random() < 0.5), quant="one")
    return (Clause(np_),)


def _multi_object_caption(scene: Scene, rng: random.Random, relations: bool) -> tuple[Clause, ...]:
    objs = scene.objects
    pairs = [(a, r, b) for a in objs for b in objs if a is not b for r in RELATIONS if related(a, r, b)]
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    kinds = ["list", "list", "count"]
    if relations and pairs:
        kinds += ["relation", "relation"]
    if any(n > 1 for n in groups.values()):
        kinds += ["group"]
    kind = rng.choice(kinds)
    if kind == "relation":
        a, r, b = rng.choice(pairs)
        return (Clause(_full_np(a, place=False, size=rng.random() < 0.5), r,
                       _full_np(b, place=False, size=rng.random() < 0.5)),)
    if kind == "count":
        noun = rng.choice(GENERIC_NOUNS)
        total = Clause(NounPhrase(quant=NUMBER_WORDS[len(objs)], noun=noun))
        if rng.random() < 0.5:
            return (total,)
        return (total, Clause(_full_np(rng.choice(objs), place=True)))
    if kind == "group":
        (colour, shape), n = max(groups.items(), key=lambda kv: kv[1])
        clause = Clause(NounPhrase(quant=NUMBER_WORDS[n], colour=colour, shape=shape))
        rest = [o for o in objs if (o.colour, o.shape) != (colour, shape)]
        if rest and rng.random() < 0.5:
            return (clause, Clause(_full_np(rest[0], place=False)))
        return (clause,)
    with_place = rng.random() < 0.5
    return tuple(Clause(_full_np(o, place=with_place)) for o in objs)


def true_caption(scene: Scene, rng: random.Random, *, relations: bool = True) -> Caption:
    """One true caption of the scene, drawn from the grammar's paraphrases."""
    if len(scene.objects) == 1:
        clauses = _single_object_caption(scene, rng)
    else:
        clauses = _multi_object_caption(scene, rng, relations)
    caption = Caption(clauses=clauses, prefix=rng.choice(PREFIXES), style=rng.randrange(1000))
    if not holds(scene, caption):  # a bug in this module, never a property of the scene
        raise AssertionError(f"generated a false caption for {scene.image_id}: {caption_text(caption)}")
    return caption


def true_captions(scene: Scene, rng: random.Random, k: int, *, relations: bool = True) -> list[Caption]:
    """`k` true captions, distinct in text where the grammar allows it."""
    out: list[Caption] = []
    seen: set[str] = set()
    for _ in range(k * 8):
        c = true_caption(scene, rng, relations=relations)
        t = caption_text(c)
        if t not in seen:
            seen.add(t)
            out.append(c)
            if len(out) == k:
                return out
    while len(out) < k:  # tiny grammar corner: repeat rather than return fewer
        out.append(out[len(out) % max(1, len(seen))])
    return out


# ---------------------------------------------------------------- one attribute wrong

def _np_edits(np_: NounPhrase) -> list[tuple[str, NounPhrase]]:
    edits: list[tuple[str, NounPhrase]] = []
    if np_.size:
        edits += [("size", replace(np_, size=v)) for v in SIZES if v != np_.size]
    if np_.colour:
        edits += [("colour", replace(np_, colour=v)) for v in COLOURS if v != np_.colour]
    if np_.shape:
        edits += [("shape", replace(np_, shape=v)) for v in SHAPES if v != np_.shape]
    if np_.place:
        edits += [("place", replace(np_, place=v)) for v in PLACES if v != np_.place]
    if np_.quant != "a":
        edits += [("count", replace(np_, quant=v)) for v in NUMBERS if v != np_.quant]
    return edits


def _clause_edits(clause: Clause) -> list[tuple[str, Clause]]:
    edits = [(what, replace(clause, subject=np_)) for what, np_ in _np_edits(clause.subject)]
    if clause.obj is not None:
        edits += [(what, replace(clause, obj=np_)) for what, np_ in _np_edits(clause.obj)]
        edits += [("relation", replace(clause, relation=r)) for r in RELATIONS if r != clause.relation]
    return edits


def wrong_attribute(scene: Scene, caption: Caption, rng: random.Random) -> tuple[str, Caption] | None:
    """The caption with one attribute (size, colour, shape, place, count or relation) changed so
    that it is false of the scene, and which attribute; None if no single change makes it false."""
    candidates: list[tuple[str, Caption]] = []
    for i, clause in enumerate(caption.clauses):
        for what, edited in _clause_edits(clause):
            clauses = caption.clauses[:i] + (edited,) + caption.clauses[i + 1:]
            c = replace(caption, clauses=clauses)
            if not holds(scene, c):
                candidates.append((what, c))
    if not candidates:
        return None
    # Pick the attribute kind first, so colour (8 values) does not crowd out size (2).
    kinds = sorted({w for w, _ in candidates})
    kind = rng.choice(kinds)
    return rng.choice([c for c in candidates if c[0] == kind])
