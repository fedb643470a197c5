"""Scenes of the toy world: 1-3 objects, each a shape, colour, size and place on a 3x3 grid.

A scene is pure data (no pixels): the renderer draws it, the grammar describes it, the checker
judges captions against it. Places and relations are defined on grid cells, so every fact about
a scene is exact: an object in the left column is "on the left", an object in a column further
left than another is "left of" it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Saturated colours far apart in RGB, so that they stay distinguishable at 64 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (245, 225, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (150, 40, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = ("small", "large")
# Radius as a fraction of the image side. A large object nearly fills its grid cell.
SIZE_RADIUS = {"small": 0.085, "large": 0.155}

COLUMNS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")
PLACES = ("left", "right", "top", "bottom", "middle", "top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND_KINDS = ("solid", "gradient", "texture")

# Share of multi-object scenes where a second object repeats the first one's colour and shape,
# so that counts ("two blue squares") occur.
DUPLICATE_SHARE = 0.3


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    col: int  # 0 left, 1 center, 2 right
    row: int  # 0 top, 1 middle, 2 bottom
    x: float  # centre, fraction of the image width
    y: float  # centre, fraction of the image height
    dx: float = 0.0  # motion per frame (clips only), fraction of the image side
    dy: float = 0.0


@dataclass(frozen=True)
class Background:
    kind: str  # solid | gradient | texture
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]  # gradient end; equals `colour` otherwise
    direction: int = 0  # gradient: 0 horizontal, 1 vertical, 2 diagonal
    texture_seed: int = 0


@dataclass(frozen=True)
class Scene:
    image_id: str
    split: str
    objects: tuple[Obj, ...]
    background: Background
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Scene":
        bg = d["background"]
        return cls(
            image_id=d["image_id"],
            split=d["split"],
            objects=tuple(Obj(**o) for o in d["objects"]),
            background=Background(
                kind=bg["kind"], colour=tuple(bg["colour"]), colour2=tuple(bg["colour2"]),
                direction=bg["direction"], texture_seed=bg["texture_seed"],
            ),
            meta=dict(d.get("meta") or {}),
        )


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the world seed and a path of names; stable across processes and runs
    (unlike `hash()`), so any worker can rebuild any scene alone."""
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def cell_place(col: int, row: int) -> str:
    """The most precise place word for a grid cell."""
    if col == 1 and row == 1:
        return "middle"
    if col == 1:
        return ROWS[row]
    if row == 1:
        return COLUMNS[col]
    return f"{ROWS[row]} {COLUMNS[col]}"


def in_place(obj: Obj, place: str) -> bool:
    """Whether `place` (one of PLACES) is true of the object."""
    if place == "middle":
        return obj.col == 1 and obj.row == 1
    words = place.split()
    for w in words:
        if w in ("left", "right") and COLUMNS[obj.col] != w:
            return False
        if w in ("top", "bottom") and ROWS[obj.row] != w:
            return False
    return True


def related(a: Obj, relation: str, b: Obj) -> bool:
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}")


def _colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def sample_background(rng: random.Random, object_colours: list[str]) -> Background:
    """A muted background far enough from every object colour to keep objects visible."""
    kind = rng.choice(BACKGROUND_KINDS)

    def muted() -> tuple[int, int, int]:
        for _ in range(100):
            base = rng.randint(60, 200)
            c = tuple(max(0, min(255, base + rng.randint(-25, 25))) for _ in range(3))
            if all(_colour_distance(c, COLOURS[name]) > 120 for name in object_colours):
                return c  # type: ignore[return-value]
        return (128, 128, 128)

    c1 = muted()
    c2 = muted() if kind == "gradient" else c1
    return Background(kind=kind, colour=c1, colour2=c2, direction=rng.randrange(3),
                      texture_seed=rng.randrange(2**31))


def _position(rng: random.Random, col: int, row: int, size: str) -> tuple[float, float]:
    # Jitter within the cell, less for large objects so that neighbours never overlap.
    slack = max(0.0, 1 / 6 - SIZE_RADIUS[size]) + 0.01
    x = (col + 0.5) / 3 + rng.uniform(-slack, slack)
    y = (row + 0.5) / 3 + rng.uniform(-slack, slack)
    return round(x, 4), round(y, 4)


def sample_objects(rng: random.Random, n: int) -> tuple[Obj, ...]:
    cells = rng.sample(range(9), n)
    attrs = [(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES)) for _ in range(n)]
    if n >= 2 and rng.random() < DUPLICATE_SHARE:
        attrs[1] = (attrs[0][0], attrs[0][1], rng.choice(SIZES))
    objs = []
    for cell, (shape, colour, size) in zip(cells, attrs):
        col, row = cell % 3, cell // 3
        x, y = _position(rng, col, row, size)
        objs.append(Obj(shape=shape, colour=colour, size=size, col=col, row=row, x=x, y=y))
    # Reading order (top to bottom, left to right) keeps captions and JSON stable.
    return tuple(sorted(objs, key=lambda o: (o.row, o.col)))


def object_count(rng: random.Random, max_objects: int, single_object_share: float) -> int:
    if max_objects == 1 or rng.random() < single_object_share:
        return 1
    return rng.randint(2, max_objects)


def sample_scene(seed: int, split: str, index: int, image_id: str, *, max_objects: int,
                 single_object_share: float) -> Scene:
    """The scene number `index` of `split`; a pure function of its arguments."""
    rng = random.Random(derive_seed(seed, split, index, "scene"))
    n = object_count(rng, max_objects, single_object_share)
    objects = sample_objects(rng, n)
    background = sample_background(rng, [o.colour for o in objects])
    return Scene(image_id=image_id, split=split, objects=objects, background=background)


def describe(obj: Obj) -> str:
    """'small red circle (top left)': for logs and reports."""
    return f"{obj.size} {obj.colour} {obj.shape} ({cell_place(obj.col, obj.row)})"
