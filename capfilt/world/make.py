"""Make a world: sample scenes, write captions and tasks, render images in parallel.

The world is written into a sibling `OUT.partial` directory and renamed into place at the end,
so a half-made world never looks like a world. Every random draw comes from a seed derived from
(world seed, split, index, purpose), so the bytes depend on the settings alone, not on the number
of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from capfilt.world import layout
from capfilt.world.render import encode, render
from capfilt.world.scene import Scene, sample_scene
from capfilt.world.settings import WorldMakeSettings
from capfilt.world.splits import clean_rows, format_plan, web_rows
from capfilt.world.tasks import clip_rows, clip_scene, dialog_rows, nlvr2_rows, vqa_rows
from model.atomic_write import swap_in

EVAL_CAPTIONS = 5
RENDER_CHUNK = 500


class WorldExistsError(FileExistsError):
    """OUT already holds something, and overwriting was not asked for (or it is not a world)."""


# (scene, relative path or clip directory, format, frames or None)
RenderJob = tuple[Scene, str, str, int | None]


def _render_chunk(args: tuple[str, int, int, list[RenderJob]]) -> int:
    root, side, quality, jobs = args
    base = Path(root)
    for scene, rel, fmt, frames in jobs:
        if frames is None:
            (base / rel).write_bytes(encode(render(scene, side), fmt, quality))
        else:
            for f in range(frames):
                (base / layout.clip_frame_relpath(scene.image_id, f)).write_bytes(encode(render(scene, side, f), "png"))
    return len(jobs)


def _chunks(jobs: list[RenderJob], root: Path, s: WorldMakeSettings) -> Iterable[tuple[str, int, int, list[RenderJob]]]:
    for i in range(0, len(jobs), RENDER_CHUNK):
        yield str(root), s.image_size, s.jpeg_quality, jobs[i:i + RENDER_CHUNK]


def _render_all(jobs: list[RenderJob], root: Path, s: WorldMakeSettings) -> None:
    workers = s.workers or os.cpu_count() or 1
    workers = max(1, min(workers, -(-len(jobs) // RENDER_CHUNK)))
    if workers == 1:
        for chunk in _chunks(jobs, root, s):
            _render_chunk(chunk)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_render_chunk, _chunks(jobs, root, s)):
            pass


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="zstd")


STR = pa.string()
SCHEMAS = {
    "web": pa.schema([("key", STR), ("url", STR), ("caption", STR)]),
    "web_labels": pa.schema([("key", STR), ("image_id", STR), ("format", STR), ("noise", STR), ("wrong", STR),
                             ("source", STR), ("true_caption", STR), ("fetch", STR)]),
    "clean": pa.schema([("image_id", STR), ("image", STR), ("caption", STR)]),
    "vqa": pa.schema([("split", STR), ("question_id", STR), ("image_id", STR), ("image", STR), ("question", STR),
                      ("answers", pa.list_(STR)), ("answer_type", STR)]),
    "nlvr2": pa.schema([("split", STR), ("pair_id", STR), ("left_id", STR), ("right_id", STR), ("left_image", STR),
                        ("right_image", STR), ("statement", STR), ("label", pa.bool_())]),
    "dialog": pa.schema([("split", STR), ("image_id", STR), ("image", STR), ("caption", STR), ("rounds", pa.list_(
        pa.struct([("question", STR), ("answer", STR), ("candidates", pa.list_(STR)), ("answer_index", pa.int32())])))]),
    "clips": pa.schema([("split", STR), ("clip_id", STR), ("frames", pa.list_(STR)), ("captions", pa.list_(STR))]),
    "clips_qa": pa.schema([("split", STR), ("clip_id", STR), ("question_id", STR), ("question", STR),
                           ("answers", pa.list_(STR))]),
}


def _prepare(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise WorldExistsError(f"{out} is not empty (use --overwrite to replace a world)")
        if not (out / layout.SETTINGS).is_file():
            raise WorldExistsError(f"{out} is not empty and does not hold a world; refusing to replace it")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def make_world(s: WorldMakeSettings) -> dict[str, Any]:
    """Write the world described by `s` into `s.out`; return its manifest."""
    out = Path(s.out)
    tmp = _prepare(out, s.overwrite)
    sizes = {"web": s.size, "human": s.human_size, "val": s.val_size, "test": s.test_size}
    scenes = {
        split: [sample_scene(s.seed, split, i, layout.image_id(split, i), max_objects=s.max_objects,
                             single_object_share=s.single_object_share) for i in range(n)]
        for split, n in sizes.items()
    }
    clips = [clip_scene(s.seed, i, layout.image_id("clips", i), s.clip_frames) for i in range(s.clips)]

    formats = format_plan(s)
    jobs: list[RenderJob] = [(sc, layout.image_relpath("web", sc.image_id, fmt), fmt, None)
                             for sc, fmt in zip(scenes["web"], formats)]
    for split in layout.CLEAN_SPLITS:
        jobs += [(sc, layout.image_relpath(split, sc.image_id, "png"), "png", None) for sc in scenes[split]]
    jobs += [(sc, "", "png", s.clip_frames) for sc in clips]
    for split in sizes:
        (tmp / "images" / split).mkdir(parents=True)
    for sc in clips:
        (tmp / "images" / "clips" / sc.image_id).mkdir(parents=True)
    _render_all(jobs, tmp, s)

    web, labels = web_rows(scenes["web"], formats, s)
    _write_parquet(tmp / layout.WEB, web, SCHEMAS["web"])
    _write_parquet(tmp / layout.WEB_LABELS, labels, SCHEMAS["web_labels"])
    (tmp / layout.WEB_URLS).write_text("".join(r["url"] + "\n" for r in web))
    clean_counts = {}
    for split in layout.CLEAN_SPLITS:
        k = s.human_captions if split == "human" else EVAL_CAPTIONS
        rows = clean_rows(scenes[split], k, s)
        clean_counts[split] = len(rows)
        _write_parquet(tmp / layout.TABLES[split], rows, SCHEMAS["clean"])

    clean_scenes = [sc for split in layout.CLEAN_SPLITS for sc in scenes[split]]
    task_rows = {
        "vqa": vqa_rows(clean_scenes, s),
        "nlvr2": nlvr2_rows({split: scenes[split] for split in layout.CLEAN_SPLITS}, s),
        "dialog": dialog_rows(clean_scenes, s),
    }
    task_rows["clips"], task_rows["clips_qa"] = clip_rows(clips, s)
    for name, rows in task_rows.items():
        _write_parquet(tmp / layout.TABLES[name], rows, SCHEMAS[name])

    with open(tmp / layout.SCENES, "w") as f:
        for sc in [*(x for split in sizes for x in scenes[split]), *clips]:
            f.write(json.dumps(sc.to_json(), sort_keys=True, separators=(",", ":")) + "\n")

    manifest = {
        "images": {**sizes, "clips": s.clips, "clip_frames": s.clips * s.clip_frames},
        "rows": {"web": len(web), **clean_counts, **{k: len(v) for k, v in task_rows.items()}},
        "web_noise": dict(sorted(Counter(r["noise"] for r in labels).items())),
        "web_fetch": dict(sorted(Counter(r["fetch"] for r in labels).items())),
        "web_formats": dict(sorted(Counter(formats).items())),
        "base_url": s.base_url,
        "files": sorted([layout.SETTINGS, layout.MANIFEST, layout.SCENES, layout.WEB_URLS, *layout.TABLES.values()]),
    }
    (tmp / layout.SETTINGS).write_text(json.dumps(s.recorded(), indent=2, sort_keys=True) + "\n")
    (tmp / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    swap_in(tmp, out)  # an old world stays whole until the new one takes its place
    return manifest
