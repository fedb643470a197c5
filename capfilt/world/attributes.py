"""Which attribute a captioner gets wrong: per-attribute accuracy on one-object scenes.

"Share of captions true" says how often a captioner is right, not why it is wrong. On a scene
with one object every attribute a caption names belongs to that object, so each can be judged
alone: size, colour, shape and place are scored separately, over the captions that name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capfilt.world.checker import parse
from capfilt.world.scene import Scene, in_place

ATTRIBUTES = ("size", "colour", "shape", "place")


@dataclass
class AttributeTally:
    captions: int = 0  # captions of one-object scenes
    unparsed: int = 0
    named: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    right: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))

    def add(self, scene: Scene, caption: str) -> None:
        """Count one caption; scenes with more than one object are not counted."""
        if len(scene.objects) != 1:
            return
        self.captions += 1
        parsed = parse(caption)
        if parsed is None:
            self.unparsed += 1
            return
        obj = scene.objects[0]
        # Subjects only: the object of a relation cannot be the scene's one object.
        for phrase in (clause.subject for clause in parsed.clauses):
            for name in ("size", "colour", "shape"):
                value = getattr(phrase, name)
                if value is not None:
                    self.named[name] += 1
                    self.right[name] += value == getattr(obj, name)
            if phrase.place is not None:
                self.named["place"] += 1
                self.right["place"] += in_place(obj, phrase.place)

    def summary(self) -> dict:
        return {"one_object_captions": self.captions, "unparsed": self.unparsed,
                **{f"{name}_accuracy": (self.right[name] / self.named[name] if self.named[name] else None)
                   for name in ATTRIBUTES},
                "named": dict(self.named)}


def attribute_accuracy(scenes: list[Scene], captions: list[str]) -> dict:
    """Per-attribute accuracy of `captions` (one per scene) over the one-object scenes."""
    tally = AttributeTally()
    for scene, caption in zip(scenes, captions, strict=True):
        tally.add(scene, caption)
    return tally.summary()
