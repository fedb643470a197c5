"""Labelled pictures for the ViT's warm-up: each patch names the object covering it, every object
is labelled somewhere, and the same arguments give the same pictures."""

import numpy as np
import pytest

from capfilt.world.scene import COLOURS, SHAPES, SIZES, Background, Obj, Scene
from capfilt.world.vision_labels import PATCH_LABELS, PRESENT_LABELS, labelled_pictures, patch_owners


def scene_of(*objects: Obj) -> Scene:
    bg = Background(kind="solid", colour=(120, 120, 120), colour2=(120, 120, 120))
    return Scene(image_id="x", split="t", objects=objects, background=bg)


def test_patch_owner_is_the_object_under_it_and_background_elsewhere():
    star = Obj(shape="star", colour="red", size="large", col=0, row=0, x=1 / 6, y=1 / 6)
    cross = Obj(shape="cross", colour="blue", size="small", col=2, row=2, x=5 / 6, y=5 / 6)
    owners = patch_owners(scene_of(star, cross), side=64, patch=8, min_pixels=4).reshape(8, 8)
    # the patch holding each centre (row-major: y selects the row)
    assert owners[int(64 / 6) // 8, int(64 / 6) // 8] == 1
    assert owners[int(5 * 64 / 6) // 8, int(5 * 64 / 6) // 8] == 2
    # the empty corners and the middle are background
    assert owners[0, 7] == 0 and owners[7, 0] == 0 and owners[4, 4] == 0
    # the large star covers more patches than the small cross
    assert (owners == 1).sum() > (owners == 2).sum() > 0


def test_patch_labels_follow_the_owner_and_present_names_what_is_there():
    pics = labelled_pictures(3, "vision-test", 0, 40, side=64, patch=8)
    assert pics.images.shape == (40, 64, 64, 3) and pics.images.dtype == np.uint8
    for name, values in PATCH_LABELS.items():
        labels = pics.patch[name]
        assert labels.shape == (40, 64)
        # background exactly where no object is
        assert ((labels == len(values)) == (pics.objects == 0)).all()
    for i in range(len(pics)):
        present = {PRESENT_LABELS[j] for j in np.flatnonzero(pics.present[i])}
        shapes = {SHAPES[s] for s in pics.patch["shape"][i] if s < len(SHAPES)}
        colours = {list(COLOURS)[c] for c in pics.patch["colour"][i] if c < len(COLOURS)}
        assert present == {f"shape:{s}" for s in shapes} | {f"colour:{c}" for c in colours}
        assert set(pics.patch["size"][i]) <= set(range(len(SIZES) + 1))


def test_every_object_owns_at_least_one_patch():
    # an object no patch is labelled with would be silently left out of the warm-up
    pics = labelled_pictures(0, "vision-test", 0, 200, side=64, patch=8, max_objects=3, single_object_share=0.0)
    counts = [len(set(row.tolist()) - {0}) for row in pics.objects]
    assert min(counts) >= 2 and max(counts) == 3
    for row in pics.objects:
        ids = sorted(set(row.tolist()) - {0})
        assert ids == list(range(1, len(ids) + 1))


def test_same_arguments_same_pictures_and_batches_differ():
    a = labelled_pictures(5, "vision-train", 32, 8, side=64, patch=8)
    b = labelled_pictures(5, "vision-train", 32, 8, side=64, patch=8)
    c = labelled_pictures(5, "vision-train", 40, 8, side=64, patch=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.objects, b.objects)
    assert not np.array_equal(a.images, c.images)


def test_labels_line_up_with_the_pixels():
    # a transposed or shifted mask would label patches whose pixels hold no such colour
    pics = labelled_pictures(1, "vision-test", 0, 30, side=64, patch=8)
    names = list(COLOURS)
    checked = 0
    for i in range(len(pics)):
        blocks = pics.images[i].reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, 64, 3).astype(int)
        for p, c in enumerate(pics.patch["colour"][i]):
            if c == len(names):
                continue
            near = (np.abs(blocks[p] - np.array(COLOURS[names[c]])).max(1) < 40).sum()
            assert near >= 2, (i, p, names[c])
            checked += 1
    assert checked > 100


def test_side_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        labelled_pictures(0, "vision-test", 0, 1, side=60, patch=8)
