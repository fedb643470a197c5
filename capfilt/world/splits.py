"""The rows of each split: the noisy web split (with its labels apart) and the clean splits.

Noise kinds and fetch failures are allocated exactly (a shuffled list with the stated counts),
so a world's noise rate is its flag to the row, whatever its size.
"""

from __future__ import annotations

import random
from typing import Any

from capfilt.world.grammar import caption_text, holds, true_caption, true_captions, wrong_attribute
from capfilt.world.layout import image_relpath, web_url
from capfilt.world.scene import Scene, derive_seed
from capfilt.world.settings import WorldMakeSettings

NOISE_KINDS = ("correct", "other_image", "wrong_attribute", "junk", "empty")

# Alt-text as it comes off web pages; none of it is in the caption grammar.
_JUNK_FIXED = (
    "click to enlarge", "view larger image", "image", "untitled", "thumbnail", "no image available",
    "logo", "banner", "placeholder", "shop now", "loading...", "photo", "download", "free shipping",
    "image may contain text", "stock photo", "pinterest", "see more", "default", "main image",
)


def junk_alt_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        stem = rng.choice(("IMG_", "DSC_", "DSCN", "P", "image-", "photo_", "Screenshot_"))
        ext = rng.choice((".jpg", ".JPG", ".jpeg", ".png", ".webp"))
        return f"{stem}{rng.randrange(10000):04d}{ext}"
    if roll < 0.45:
        return f"{rng.choice(('untitled', 'image', 'photo', 'shot'))}-{rng.randrange(1, 999)}"
    return rng.choice(_JUNK_FIXED)


def allocate(n: int, weights: dict[str, float], seed: int, *names: object) -> list[str]:
    """`n` labels with counts proportional to `weights` (largest remainder), in a seeded order."""
    total = sum(weights.values())
    if n == 0 or total <= 0:
        return [next(iter(weights))] * n if weights else []
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), list(weights).index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    labels = [k for k in weights for _ in range(counts[k])]
    random.Random(derive_seed(seed, *names)).shuffle(labels)
    return labels


def web_noise_plan(s: WorldMakeSettings) -> list[str]:
    n_noisy = round(s.size * s.web_noise)
    noisy = allocate(n_noisy, s.noise_weights(), s.seed, "web", "noise-kinds")
    flags = allocate(s.size, {"noisy": n_noisy, "correct": s.size - n_noisy}, s.seed, "web", "noisy")
    it = iter(noisy)
    return [next(it) if f == "noisy" else "correct" for f in flags]


def fetch_plan(s: WorldMakeSettings) -> list[str]:
    n_broken = round(s.size * s.broken_share)
    kinds = allocate(n_broken, {k: 1.0 for k in s.broken_kinds}, s.seed, "web", "fetch-kinds")
    flags = allocate(s.size, {"broken": n_broken, "ok": s.size - n_broken}, s.seed, "web", "broken")
    it = iter(kinds)
    return [next(it) if f == "broken" else "ok" for f in flags]


def format_plan(s: WorldMakeSettings) -> list[str]:
    n_png = round(s.size * s.web_png_share)
    return allocate(s.size, {"png": n_png, "jpg": s.size - n_png}, s.seed, "web", "formats")


def web_rows(scenes: list[Scene], formats: list[str], s: WorldMakeSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pipeline input rows, label rows) of the web split."""
    noise = web_noise_plan(s)
    fetch = fetch_plan(s)
    rows, labels = [], []
    for i, scene in enumerate(scenes):
        rng = random.Random(derive_seed(s.seed, "web", i, "caption"))
        truth = true_caption(scene, rng, relations=s.relations)
        kind, caption, wrong, source = noise[i], caption_text(truth), None, None
        if kind == "other_image":
            source, caption = _other_image_caption(scenes, i, rng, s)
            if source is None:  # every other caption happened to be true here: say one thing wrong instead
                kind = "wrong_attribute"
        if kind == "wrong_attribute":
            wrong, caption = _wrong_caption(scene, truth, rng, s)
        elif kind == "junk":
            caption = junk_alt_text(rng)
        elif kind == "empty":
            caption = ""
        key = scene.image_id
        rows.append({"key": key, "url": web_url(s.base_url, key, formats[i]), "caption": caption})
        labels.append({
            "key": key, "image_id": key, "format": formats[i], "noise": kind, "wrong": wrong,
            "source": source, "true_caption": caption_text(truth), "fetch": fetch[i],
        })
    return rows, labels


def _other_image_caption(scenes: list[Scene], i: int, rng: random.Random, s: WorldMakeSettings) -> tuple[str | None, str]:
    if len(scenes) < 2:
        return None, ""
    for _ in range(50):
        j = rng.randrange(len(scenes) - 1)
        j += j >= i
        other = true_caption(scenes[j], rng, relations=s.relations)
        if not holds(scenes[i], other):
            return scenes[j].image_id, caption_text(other)
    return None, ""


def _wrong_caption(scene: Scene, truth, rng: random.Random, s: WorldMakeSettings) -> tuple[str, str]:
    candidate = truth
    for _ in range(20):
        result = wrong_attribute(scene, candidate, rng)
        if result is not None:
            what, caption = result
            return what, caption_text(caption)
        candidate = true_caption(scene, rng, relations=s.relations)
    raise AssertionError(f"no one-attribute-wrong caption for {scene.image_id}")


def clean_rows(scenes: list[Scene], k: int, s: WorldMakeSettings) -> list[dict[str, Any]]:
    """One row per (image, caption), `k` true captions per image, PNG images."""
    rows = []
    for i, scene in enumerate(scenes):
        rng = random.Random(derive_seed(s.seed, scene.split, i, "captions"))
        path = image_relpath(scene.split, scene.image_id, "png")
        for c in true_captions(scene, rng, k, relations=s.relations):
            rows.append({"image_id": scene.image_id, "image": path, "caption": caption_text(c)})
    return rows
