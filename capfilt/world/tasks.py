"""Downstream tasks' data from the world's clean scenes: VQA, NLVR2-style pairs, dialog, clips.

Every answer and label is computed from the scene, so each is exact. Tasks reuse the images of
the clean splits (human -> train, val, test), except clips, which have their own moving scenes.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from capfilt.world.grammar import NUMBER_WORDS, PLACE_PHRASES, caption_text, true_caption
from capfilt.world.layout import clip_frame_relpath, image_relpath
from capfilt.world.scene import (
    COLOURS, SHAPES, SIZE_RADIUS, SIZES, Obj, Scene, cell_place, derive_seed, related, sample_background,
    sample_objects,
)
from capfilt.world.settings import WorldMakeSettings

TASK_SPLIT = {"human": "train", "val": "val", "test": "test"}
ANSWER_POOLS = {
    "colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES),
    "count": ["0", "1", "2", "3"], "yesno": ["yes", "no"], "place": list(PLACE_PHRASES),
    "relation": ["yes", "no"], "direction": ["left", "right", "up", "down"],
}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
MOVE_WORDS = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}


def _unique(objs: tuple[Obj, ...], key) -> list[Obj]:
    return [o for o in objs if sum(key(p) == key(o) for p in objs) == 1]


def questions(scene: Scene, rng: random.Random, *, relations: bool = True) -> list[tuple[str, list[str], str]]:
    """Every question the world can answer about the scene: (question, answers, answer type).
    The first answer is the canonical one; the others are accepted synonyms."""
    objs = scene.objects
    qs: list[tuple[str, list[str], str]] = []
    n = len(objs)
    qs.append(("how many objects are there?", [str(n), NUMBER_WORDS[n]], "count"))
    for o in _unique(objs, lambda o: o.shape):
        qs.append((f"what colour is the {o.shape}?", [o.colour], "colour"))
    for o in _unique(objs, lambda o: o.colour):
        qs.append((f"what shape is the {o.colour} object?", [o.shape], "shape"))
    for o in _unique(objs, lambda o: (o.colour, o.shape)):
        qs.append((f"what size is the {o.colour} {o.shape}?", [o.size, {"small": "little", "large": "big"}[o.size]], "size"))
        place = cell_place(o.col, o.row)
        qs.append((f"where is the {o.colour} {o.shape}?", [place, *PLACE_PHRASES[place]], "place"))
    colour = rng.choice([o.colour for o in objs] + [rng.choice(list(COLOURS))])
    k = sum(o.colour == colour for o in objs)
    qs.append((f"how many {colour} objects are there?", [str(k)] + ([NUMBER_WORDS[k]] if k else ["none"]), "count"))
    for _ in range(2):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if rng.random() < 0.5:
            o = rng.choice(objs)
            colour, shape = o.colour, o.shape
        present = any(o.colour == colour and o.shape == shape for o in objs)
        qs.append((f"is there a {colour} {shape}?", ["yes" if present else "no"], "yesno"))
    named = _unique(objs, lambda o: (o.colour, o.shape))
    if relations and len(named) >= 2:
        a, b = rng.sample(named, 2)
        rel = rng.choice(("left of", "right of", "above", "below"))
        answer = "yes" if related(a, rel, b) else "no"
        qs.append((f"is the {a.colour} {a.shape} {rel} the {b.colour} {b.shape}?", [answer], "relation"))
    seen: set[str] = set()
    return [q for q in qs if not (q[0] in seen or seen.add(q[0]))]


def vqa_rows(scenes: list[Scene], s: WorldMakeSettings) -> list[dict[str, Any]]:
    rows = []
    for scene in scenes:
        rng = random.Random(derive_seed(s.seed, scene.image_id, "vqa"))
        qs = questions(scene, rng, relations=s.relations)
        for j, (q, answers, kind) in enumerate(rng.sample(qs, min(s.vqa_per_image, len(qs)))):
            rows.append({
                "split": TASK_SPLIT[scene.split], "question_id": f"{scene.image_id}-q{j}",
                "image_id": scene.image_id, "image": image_relpath(scene.split, scene.image_id, "png"),
                "question": q, "answers": answers, "answer_type": kind,
            })
    return rows


def _nlvr2_statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    both = left.objects + right.objects
    o = rng.choice(both)
    colour = o.colour if rng.random() < 0.6 else rng.choice(list(COLOURS))
    shape = o.shape if rng.random() < 0.6 else rng.choice(SHAPES)

    def has(scene: Scene, c: str | None, sh: str | None) -> bool:
        return any((c is None or x.colour == c) and (sh is None or x.shape == sh) for x in scene.objects)

    kind = rng.randrange(5)
    if kind == 0:
        return f"both images contain a {colour} {shape}", has(left, colour, shape) and has(right, colour, shape)
    if kind == 1:
        return f"at least one image contains a {colour} {shape}", has(left, colour, shape) or has(right, colour, shape)
    if kind == 2:
        n = rng.choice((1, 2, 3, len(left.objects)))
        return f"the left image contains exactly {NUMBER_WORDS[n]} objects", len(left.objects) == n
    if kind == 3:
        n = rng.choice((1, 2, 3, sum(x.shape == shape for x in both)))
        return f"there are {n} {shape}s in total", sum(x.shape == shape for x in both) == n
    return f"the right image contains a {colour} object", has(right, colour, None)


def nlvr2_rows(scenes_by_split: dict[str, list[Scene]], s: WorldMakeSettings) -> list[dict[str, Any]]:
    """Balanced true/false statements about two images of the same split."""
    pools = [(split, sc) for split, sc in scenes_by_split.items() if len(sc) >= 2]
    if not pools:
        return []
    rows = []
    for i in range(s.nlvr2_pairs):
        rng = random.Random(derive_seed(s.seed, "nlvr2", i))
        split, pool = pools[i % len(pools)]
        want = i % 2 == 0
        for _ in range(30):
            left, right = rng.sample(pool, 2)
            statement, label = _nlvr2_statement(left, right, rng)
            if label == want:
                break
        rows.append({
            "split": TASK_SPLIT[split], "pair_id": f"p{i:07d}",
            "left_id": left.image_id, "right_id": right.image_id,
            "left_image": image_relpath(split, left.image_id, "png"),
            "right_image": image_relpath(split, right.image_id, "png"),
            "statement": statement, "label": label,
        })
    return rows


def dialog_rows(scenes: list[Scene], s: WorldMakeSettings) -> list[dict[str, Any]]:
    """VisDial-style: a caption, then rounds of question, answer and answer candidates."""
    rows = []
    for scene in scenes:
        rng = random.Random(derive_seed(s.seed, scene.image_id, "dialog"))
        qs = questions(scene, rng, relations=s.relations)
        rounds = []
        for q, answers, kind in rng.sample(qs, min(s.dialog_rounds, len(qs))):
            pool = [a for a in ANSWER_POOLS[kind] if a not in answers]
            others = [a for p in ANSWER_POOLS.values() for a in p if a not in answers and a not in pool]
            distract = rng.sample(pool, min(len(pool), s.dialog_candidates - 1))
            distract += rng.sample(sorted(set(others)), s.dialog_candidates - 1 - len(distract))
            candidates = [answers[0], *distract]
            rng.shuffle(candidates)
            rounds.append({"question": q, "answer": answers[0], "candidates": candidates,
                           "answer_index": candidates.index(answers[0])})
        rows.append({
            "split": TASK_SPLIT[scene.split], "image_id": scene.image_id,
            "image": image_relpath(scene.split, scene.image_id, "png"),
            "caption": caption_text(true_caption(scene, rng, relations=s.relations)), "rounds": rounds,
        })
    return rows


def clip_scene(seed: int, index: int, clip_id: str, frames: int) -> Scene:
    """One or two objects, each moving in a straight line (or standing still) and staying in view."""
    rng = random.Random(derive_seed(seed, "clips", index, "scene"))
    objs = []
    for o in sample_objects(rng, rng.choice((1, 1, 2))):
        direction = rng.choice(list(DIRECTIONS) + (["still"] if objs else []))
        step = 0.4 / (frames - 1)
        dx, dy = (0.0, 0.0) if direction == "still" else tuple(step * v for v in DIRECTIONS[direction])
        r = SIZE_RADIUS[o.size]
        # start where the whole path stays inside the image
        lo_x, hi_x = r + max(0.0, -dx * (frames - 1)), 1 - r - max(0.0, dx * (frames - 1))
        lo_y, hi_y = r + max(0.0, -dy * (frames - 1)), 1 - r - max(0.0, dy * (frames - 1))
        x, y = round(rng.uniform(lo_x, hi_x), 4), round(rng.uniform(lo_y, hi_y), 4)
        objs.append(replace(o, x=x, y=y, col=min(2, int(x * 3)), row=min(2, int(y * 3)), dx=dx, dy=dy))
    bg = sample_background(rng, [o.colour for o in objs])
    return Scene(image_id=clip_id, split="clips", objects=tuple(objs), background=bg)


def _direction(o: Obj) -> str:
    if o.dx == 0 and o.dy == 0:
        return "still"
    return next(d for d, (vx, vy) in DIRECTIONS.items() if (vx, vy) == ((o.dx > 0) - (o.dx < 0), (o.dy > 0) - (o.dy < 0)))


def clip_rows(scenes: list[Scene], s: WorldMakeSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clips rows, clip question rows); clip splits are 80 / 10 / 10 by index."""
    clips, qa = [], []
    for i, scene in enumerate(scenes):
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        parts = []
        for o in scene.objects:
            d = _direction(o)
            verb = "standing still" if d == "still" else f"moving {MOVE_WORDS[d]}"
            parts.append(f"a {o.size} {o.colour} {o.shape} {verb}")
        captions = [" and ".join(parts), " and ".join(p.replace(f" {o.size} ", " ") for p, o in zip(parts, scene.objects))]
        clips.append({"split": split, "clip_id": scene.image_id,
                      "frames": [clip_frame_relpath(scene.image_id, f) for f in range(s.clip_frames)],
                      "captions": captions})
        questions_ = [("how many objects are there?", [str(len(scene.objects)), NUMBER_WORDS[len(scene.objects)]])]
        unique_shapes = _unique(scene.objects, lambda o: o.shape)
        for o in _unique(scene.objects, lambda o: (o.colour, o.shape)):
            d = _direction(o)
            if d != "still":
                questions_.append((f"which way does the {o.colour} {o.shape} move?", [d]))
            questions_.append((f"is the {o.colour} {o.shape} moving?", ["no" if d == "still" else "yes"]))
        for o in unique_shapes:
            questions_.append((f"what colour is the {o.shape}?", [o.colour]))
        for j, (q, answers) in enumerate(questions_):
            qa.append({"split": split, "clip_id": scene.image_id, "question_id": f"{scene.image_id}-q{j}",
                       "question": q, "answers": answers})
    return clips, qa
