"""Labelled pictures of the toy world, for warming up a vision encoder: its stand-in for ImageNet.

BLIP starts its ViT from ImageNet weights, so its captioner and filter begin with an encoder
that already tells shapes apart. A ViT trained from scratch takes thousands of strongly
supervised steps to learn that (benchmarks/vision_shape_probe.py), far more than one word of a
caption or one hard negative teaches it in a 2-core budget. These pictures come from the world's
own scene generator under split names that no world uses, so they never repeat a world's images
(nor its test split). Each patch of the ViT's grid is labelled with the shape, colour and size of
the object that covers most of it (or "background"), and each picture with the shapes and colours
it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from capfilt.world.render import SUPERSAMPLE, draw_object, render
from capfilt.world.scene import COLOURS, SHAPES, SIZES, sample_scene

# Per-patch label sets; a patch no object covers takes the extra class len(names) ("background").
PATCH_LABELS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES}
# Picture-level multi-label: which shapes and which colours it holds.
PRESENT_LABELS: tuple[str, ...] = tuple(f"shape:{s}" for s in SHAPES) + tuple(f"colour:{c}" for c in COLOURS)


@dataclass
class LabelledPictures:
    images: np.ndarray  # (n, side, side, 3) uint8
    patch: dict[str, np.ndarray]  # label name -> (n, patches) int64; background = len(PATCH_LABELS[name])
    objects: np.ndarray  # (n, patches) int64: 0 where no object, k for the k-th object of the scene
    present: np.ndarray  # (n, len(PRESENT_LABELS)) float32, 0 or 1

    def __len__(self) -> int:
        return len(self.images)


def patch_owners(scene, side: int, patch: int, min_pixels: float) -> np.ndarray:
    """(patches,) int64 in row-major patch order: 1 + the index of the object covering most of
    each patch, if it covers at least `min_pixels` (in pixels of `side`) of it, else 0.

    Coverage is measured at the renderer's supersampled size, as the picture is drawn, so that a
    sliver the reduction blends into the background does not count as the object."""
    big, grid = side * SUPERSAMPLE, side // patch
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for k, obj in enumerate(scene.objects):
        draw_object(draw, obj, big, fill=k + 1)
    cell = patch * SUPERSAMPLE
    blocks = np.asarray(mask).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    if not scene.objects:
        return np.zeros(grid * grid, dtype=np.int64)
    counts = np.stack([(blocks == k + 1).sum(1) for k in range(len(scene.objects))]) / SUPERSAMPLE**2
    owner = counts.argmax(0) + 1
    owner[counts.max(0) < min_pixels] = 0
    return owner.astype(np.int64)


def labelled_pictures(seed: int, split: str, start: int, count: int, *, side: int, patch: int,
                      max_objects: int = 3, single_object_share: float = 0.5,
                      min_pixels: float | None = None) -> LabelledPictures:
    """Pictures number start .. start+count-1 of `split` (a name no world uses, e.g. "vision-train"):
    a pure function of the arguments, so any process can make any batch again."""
    if side % patch:
        raise ValueError(f"image side {side} is not a multiple of the patch size {patch}")
    # an eighth of a patch: enough of an edge or a corner to say what the object is
    min_pixels = patch * patch / 8 if min_pixels is None else min_pixels
    images, owners, present = [], [], []
    patch_labels: dict[str, list[np.ndarray]] = {name: [] for name in PATCH_LABELS}
    for index in range(start, start + count):
        scene = sample_scene(seed, split, index, f"{split}-{index}", max_objects=max_objects,
                             single_object_share=single_object_share)
        images.append(np.asarray(render(scene, side)))
        owner = patch_owners(scene, side, patch, min_pixels)
        owners.append(owner)
        for name, values in PATCH_LABELS.items():
            per_object = np.array([len(values)] + [values.index(getattr(o, name)) for o in scene.objects])
            patch_labels[name].append(per_object[owner])
        row = np.zeros(len(PRESENT_LABELS), dtype=np.float32)
        for obj in scene.objects:
            row[PRESENT_LABELS.index(f"shape:{obj.shape}")] = 1.0
            row[PRESENT_LABELS.index(f"colour:{obj.colour}")] = 1.0
        present.append(row)
    return LabelledPictures(images=np.stack(images), patch={k: np.stack(v) for k, v in patch_labels.items()},
                            objects=np.stack(owners), present=np.stack(present))
