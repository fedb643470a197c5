"""Making a world: same seed same bytes, noise as flagged, labels apart, tasks that agree with
the scenes, and the World API that later code reads it with."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from capfilt.world import World, WorldExistsError, WorldMakeSettings, make_world
from capfilt.world.scene import COLOURS

SMALL = dict(size=300, human_size=40, val_size=10, test_size=10, nlvr2_pairs=40, clips=6)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    out = tmp_path_factory.mktemp("world") / "w"
    make_world(WorldMakeSettings(out=out, seed=3, **SMALL))
    return World.load(out)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, world):
    again = tmp_path / "again"
    make_world(WorldMakeSettings(out=again, seed=3, workers=2, **{**SMALL}))
    a, b = digest(world.root), digest(again)
    assert len(a) > 300 + 60 + 6 * 8
    assert a == b


def test_another_seed_other_bytes(tmp_path, world):
    other = tmp_path / "other"
    make_world(WorldMakeSettings(out=other, seed=4, **SMALL))
    a, b = digest(world.root), digest(other)
    assert len(a) == len(b)  # the same files, save which web images are PNG
    assert a["web.parquet"] != b["web.parquet"] and a["scenes.jsonl"] != b["scenes.jsonl"]


def test_layout_and_pipeline_input_hold_no_labels(world):
    root = world.root
    for name in ["settings.json", "manifest.json", "scenes.jsonl", "web_urls.txt", "web.parquet",
                 "web_labels.parquet", "human.parquet", "val.parquet", "test.parquet", "tasks/vqa.parquet",
                 "tasks/nlvr2.parquet", "tasks/dialog.parquet", "tasks/clips.parquet", "tasks/clips_qa.parquet"]:
        assert (root / name).is_file(), name
    assert pq.read_schema(root / "web.parquet").names == ["key", "url", "caption"]
    assert str(root) not in (root / "settings.json").read_text()  # a world can move
    urls = (root / "web_urls.txt").read_text().split()
    assert urls == world.table("web")["url"].to_pylist()
    assert all(u.startswith("http://127.0.0.1:8600/web/w") for u in urls)


def test_images_exist_decode_and_have_the_size_asked(world):
    labels = world.web_labels
    formats = Counter(r["format"] for r in labels.values())
    assert formats == {"jpg": 240, "png": 60}
    for image_id in ["w0000000", "w0000299", "h0000000", "v0000009", "t0000000"]:
        path = world.image_path(image_id)
        with Image.open(path) as im:
            im.load()
            assert im.size == (64, 64) and im.mode == "RGB"
            assert im.format == ("PNG" if path.suffix == ".png" else "JPEG")
    frames = world.clip_frames("c0000000")
    assert len(frames) == 8 and all(p.is_file() for p in frames)
    assert len({p.read_bytes() for p in frames}) > 1  # something moves


def test_image_size_flag(tmp_path):
    make_world(WorldMakeSettings(out=tmp_path / "w", size=5, human_size=1, val_size=1, test_size=1, nlvr2_pairs=0,
                                 clips=1, image_size=32))
    w = World.load(tmp_path / "w")
    with Image.open(w.image_path("h0000000")) as im:
        assert im.size == (32, 32)


@pytest.mark.parametrize("web_noise, single", [(0.4, 0.7), (0.15, 0.0), (0.0, 1.0)])
def test_noise_rate_measured_by_the_checker_matches_the_flag(tmp_path, web_noise, single):
    s = WorldMakeSettings(out=tmp_path / "w", size=1500, human_size=0, val_size=0, test_size=0, nlvr2_pairs=0,
                          clips=0, web_noise=web_noise, single_object_share=single, broken_share=0.08, seed=11,
                          workers=1)
    make_world(s)
    w = World.load(s.out)
    web = w.table("web").to_pylist()
    labels = w.web_labels
    measured = w.noise_ratio([r["key"] for r in web], [r["caption"] for r in web])
    assert abs(measured - web_noise) <= 0.02
    # each row's label agrees with the checker: correct rows true, every noisy row false
    for r in web:
        assert w.check(r["key"], r["caption"]).true == (labels[r["key"]]["noise"] == "correct"), (r, labels[r["key"]])
    kinds = Counter(x["noise"] for x in labels.values())
    noisy = sum(v for k, v in kinds.items() if k != "correct")
    if noisy:
        weights = s.noise_weights()
        for kind, weight in weights.items():
            assert abs(kinds[kind] / noisy - weight / sum(weights.values())) <= 0.02, kinds
    broken = Counter(x["fetch"] for x in labels.values())
    assert abs(1 - broken["ok"] / 1500 - 0.08) <= 0.02
    assert {k for k in broken if k != "ok"} == {"not_found", "truncated", "not_image", "slow"}
    # junk looks like junk, empty is empty, the other image's caption is true of that image
    for r in web:
        label = labels[r["key"]]
        if label["noise"] == "empty":
            assert r["caption"] == ""
        elif label["noise"] == "other_image":
            assert w.check(label["source"], r["caption"]).true
        elif label["noise"] == "wrong_attribute":
            assert label["wrong"] in {"size", "colour", "shape", "place", "count", "relation"}
        assert w.check(r["key"], label["true_caption"]).true


def test_clean_splits_are_clean_with_the_captions_asked(world):
    for split, per_image in [("human", 5), ("val", 5), ("test", 5)]:
        rows = world.table(split).to_pylist()
        counts = Counter(r["image_id"] for r in rows)
        assert set(counts.values()) == {per_image}
        for r in rows:
            assert world.check(r["image_id"], r["caption"]).true, r
            assert (world.root / r["image"]).is_file()


def test_vqa_answers_agree_with_the_scenes(world):
    rows = world.table("vqa").to_pylist()
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        scene = world.scene(r["image_id"])
        q, answer = r["question"], r["answers"][0]
        if q == "how many objects are there?":
            assert answer == str(len(scene.objects))
        elif q.startswith("what colour is the "):
            shape = q.removeprefix("what colour is the ").removesuffix("?")
            assert [o.colour for o in scene.objects if o.shape == shape] == [answer]
        elif q.startswith("is there a "):
            colour, shape = q.removeprefix("is there a ").removesuffix("?").split()
            present = any(o.colour == colour and o.shape == shape for o in scene.objects)
            assert answer == ("yes" if present else "no")


def test_nlvr2_dialog_and_clips(world):
    pairs = world.table("nlvr2").to_pylist()
    assert len(pairs) == 40 and Counter(p["label"] for p in pairs) == {True: 20, False: 20}
    for p in pairs:
        assert p["left_id"] != p["right_id"] and (world.root / p["left_image"]).is_file()
        if p["statement"].startswith("the left image contains exactly"):
            n = {"one": 1, "two": 2, "three": 3}[p["statement"].split()[5]]
            assert (len(world.scene(p["left_id"]).objects) == n) == p["label"]
    dialogs = world.table("dialog").to_pylist()
    assert len(dialogs) == 60
    for d in dialogs:
        assert world.check(d["image_id"], d["caption"]).true
        for r in d["rounds"]:
            assert len(r["candidates"]) == 10 and len(set(r["candidates"])) == 10
            assert r["candidates"][r["answer_index"]] == r["answer"]
    clips = world.table("clips").to_pylist()
    assert len(clips) == 6
    for c in clips:
        scene = world.scene(c["clip_id"])
        for o in scene.objects:
            for f in range(8):  # objects stay in view
                assert 0 < o.x + o.dx * f < 1 and 0 < o.y + o.dy * f < 1
        assert all(o.colour in c["captions"][0] for o in scene.objects)
    assert len(world.table("clips_qa")) >= 6


def test_scenes_are_distinguishable_colours(world):
    # every object colour is far from its background, so it can be seen at 64 px
    for scene in list(world.scenes.values())[:300]:
        for o in scene.objects:
            c, b = COLOURS[o.colour], scene.background.colour
            assert sum((x - y) ** 2 for x, y in zip(c, b)) ** 0.5 > 100


def test_urls_for_another_base_url(world, tmp_path):
    table = world.urls("http://127.0.0.1:1234/")
    assert table["url"][0].as_py() == "http://127.0.0.1:1234/web/w0000000." + world.web_labels["w0000000"]["format"]
    assert table["caption"].to_pylist() == world.table("web")["caption"].to_pylist()
    for name in ["u.parquet", "u.csv", "u.txt"]:
        path = world.write_urls(tmp_path / name, base_url="http://localhost:9")
        assert path.stat().st_size > 0
    assert (tmp_path / "u.txt").read_text().splitlines()[0].startswith("http://localhost:9/web/w0000000.")
    assert (tmp_path / "u.csv").read_text().splitlines()[0] == "key,url,caption"


def test_make_refuses_to_overwrite_unless_asked(tmp_path):
    s = dict(size=3, human_size=0, val_size=0, test_size=0, nlvr2_pairs=0, clips=0)
    make_world(WorldMakeSettings(out=tmp_path / "w", **s))
    with pytest.raises(WorldExistsError):
        make_world(WorldMakeSettings(out=tmp_path / "w", **s))
    make_world(WorldMakeSettings(out=tmp_path / "w", overwrite=True, seed=1, **s))
    assert json.loads((tmp_path / "w" / "settings.json").read_text())["seed"] == 1
    (tmp_path / "notaworld").mkdir()
    (tmp_path / "notaworld" / "precious.txt").write_text("keep me")
    with pytest.raises(WorldExistsError):
        make_world(WorldMakeSettings(out=tmp_path / "notaworld", overwrite=True, **s))
    assert (tmp_path / "notaworld" / "precious.txt").is_file()
