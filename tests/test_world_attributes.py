"""Per-attribute accuracy of captions on one-object scenes: each attribute judged alone."""

import pytest

from capfilt.world.attributes import attribute_accuracy
from capfilt.world.scene import Background, Obj, Scene

BG = Background(kind="solid", colour=(128, 128, 128), colour2=(128, 128, 128))
# a small red circle in the top left cell
ONE = Scene("a", "test", (Obj("circle", "red", "small", 0, 0, 1 / 6, 1 / 6),), BG)
TWO = Scene("b", "test", (Obj("circle", "red", "small", 0, 0, 1 / 6, 1 / 6),
                          Obj("square", "blue", "large", 2, 2, 5 / 6, 5 / 6)), BG)


def test_each_attribute_is_scored_alone():
    result = attribute_accuracy(
        [ONE, ONE, ONE, ONE],
        ["a small red circle in the top left",   # all right
         "a small red square on the left",       # shape wrong, place right
         "a large blue circle at the bottom",    # size, colour and place wrong
         "a red circle"])                        # names only colour and shape
    assert result["one_object_captions"] == 4 and result["unparsed"] == 0
    assert result["named"] == {"size": 3, "colour": 4, "shape": 4, "place": 3}
    assert result["size_accuracy"] == pytest.approx(2 / 3)
    assert result["colour_accuracy"] == pytest.approx(3 / 4)
    assert result["shape_accuracy"] == pytest.approx(3 / 4)
    assert result["place_accuracy"] == pytest.approx(2 / 3)


def test_multi_object_scenes_and_unparsed_text_are_counted_apart():
    result = attribute_accuracy([ONE, TWO, ONE], ["a green star", "a blue square", "click to enlarge"])
    assert result["one_object_captions"] == 2  # TWO is not scored
    assert result["unparsed"] == 1
    assert result["colour_accuracy"] == 0.0 and result["shape_accuracy"] == 0.0
    assert result["place_accuracy"] is None  # no caption named a place


def test_captions_and_scenes_must_pair_up():
    with pytest.raises(ValueError):
        attribute_accuracy([ONE, ONE], ["a red circle"])
