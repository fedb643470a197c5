"""The caption grammar and its checker: true captions pass, one-attribute-wrong captions fail,
text outside the grammar is not parsed, model-written spelling is normalised."""

import random

import pytest

from capfilt.world.checker import check, normalise, parse
from capfilt.world.grammar import caption_text, holds, true_captions, wrong_attribute
from capfilt.world.scene import Background, Obj, Scene, sample_scene

BG = Background(kind="solid", colour=(128, 128, 128), colour2=(128, 128, 128))


def obj(shape, colour, size, col, row):
    return Obj(shape=shape, colour=colour, size=size, col=col, row=row, x=(col + 0.5) / 3, y=(row + 0.5) / 3)


# A hand-made scene, so that these cases do not lean on the generator:
#   small red circle top left, large blue square top right, small blue square bottom right
SCENE = Scene("x", "test", (obj("circle", "red", "small", 0, 0), obj("square", "blue", "large", 2, 0),
                            obj("square", "blue", "small", 2, 2)), BG)


@pytest.mark.parametrize("caption", [
    "a small red circle in the top left",
    "there is a red circle",
    "A red circle on the left.",
    "two blue squares",
    "there are two blue squares on the right",
    "three objects",
    "a red circle left of a blue square",
    "a red circle to the left of a small blue square",
    "a large blue square above a small blue square",
    "a small blue square below a red circle",
    "a picture of a red circle and a large blue square",
    "one red circle",
    "a big blue square at the top right",
    "a small red circle in the top left corner",
    "a little red circle at the top",
])
def test_true_facts_pass(caption):
    result = check(SCENE, caption)
    assert result.parsed and result.true, result


@pytest.mark.parametrize("caption", [
    "a large red circle",                          # size
    "a green circle",                              # colour
    "a red star",                                  # shape
    "a red circle on the right",                   # place
    "a red circle at the bottom",                  # place
    "three blue squares",                          # count
    "one blue square",                             # count: there are two
    "two objects",                                 # count
    "a red circle right of a blue square",         # relation
    "a blue square above a red circle",            # relation: same row
    "a red circle and a green star",               # one clause of two false
    "a small blue square in the middle",           # place
])
def test_false_facts_fail(caption):
    result = check(SCENE, caption)
    assert result.parsed and not result.true, result
    assert any(not f.true for f in result.facts)


@pytest.mark.parametrize("caption", ["", "   ", "IMG_0231.jpg", "click to enlarge", "DSC_0042.JPG",
                                     "a red circle is nice", "red", "a photo of", "a circle of a square",
                                     "a pink circle"])
def test_outside_the_grammar_is_not_parsed_and_not_true(caption):
    result = check(SCENE, caption)
    assert not result.parsed and not result.true


@pytest.mark.parametrize("caption", [
    "a small red cir ##cle in the top left",        # WordPiece pieces, detokenised badly
    "A SMALL RED CIRCLE, IN THE TOP-LEFT!",
    "  a   small red circle in the top left .",
    "a small red circle in the top left corner .",
    "there is a red circle left - of a blue square",
])
def test_model_spelling_is_normalised(caption):
    assert check(SCENE, caption).true


def test_normalise():
    assert normalise("A Red-Circle, LEFT of a sq ##uare.") == ["a", "red", "circle", "left", "of", "a", "square"]


SETTINGS = [dict(max_objects=1, single_object_share=1.0), dict(max_objects=3, single_object_share=0.7),
            dict(max_objects=3, single_object_share=0.0), dict(max_objects=2, single_object_share=0.0)]


@pytest.mark.parametrize("opts", SETTINGS)
@pytest.mark.parametrize("relations", [True, False])
def test_every_true_caption_passes_and_every_one_attribute_wrong_caption_fails(opts, relations):
    wrong_kinds = set()
    for i in range(400):
        scene = sample_scene(7, "web", i, f"w{i}", **opts)
        rng = random.Random(i)
        for caption in true_captions(scene, rng, 4, relations=relations):
            text = caption_text(caption)
            assert check(scene, text).true, (scene, text)
            if not relations:
                assert all(c.relation is None for c in caption.clauses)
            result = wrong_attribute(scene, caption, rng)
            assert result is not None, text
            what, wrong = result
            wrong_kinds.add(what)
            wrong_text = caption_text(wrong)
            assert wrong_text != text
            verdict = check(scene, wrong_text)
            assert verdict.parsed and not verdict.true, (scene, text, what, wrong_text)
    expected = {"size", "colour", "shape", "place"}
    assert expected <= wrong_kinds


def test_parse_reads_back_what_the_grammar_writes():
    for i in range(300):
        scene = sample_scene(3, "human", i, f"h{i}", max_objects=3, single_object_share=0.3)
        for caption in true_captions(scene, random.Random(i), 3):
            parsed = parse(caption_text(caption))
            assert parsed is not None
            assert [c.subject.colour for c in parsed.clauses] == [c.subject.colour for c in caption.clauses]
            assert [c.relation for c in parsed.clauses] == [c.relation for c in caption.clauses]
            assert holds(scene, parsed)
