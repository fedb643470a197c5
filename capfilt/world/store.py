"""A made world, read back: what training, benchmarks and pipeline tests import.

    world = World.load(out)
    world.scene("w0000042")                      # the ground truth of one image
    world.check("w0000042", "a red circle")      # CheckResult: parsed? every fact true?
    world.table("human")                         # pyarrow Table of a split or task
    world.image_path("h0000003")                 # absolute path of an image
    world.write_urls("urls.parquet", base_url=server.base_url)
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capfilt.world import layout
from capfilt.world.checker import CheckResult, check
from capfilt.world.scene import Scene
from capfilt.world.settings import WorldMakeSettings


class NotAWorldError(FileNotFoundError):
    """The directory was not made by `capfilt world make`."""


class World:
    def __init__(self, root: Path, settings: WorldMakeSettings, manifest: dict[str, Any]):
        self.root = root
        self.settings = settings
        self.manifest = manifest

    @classmethod
    def load(cls, root: str | Path) -> "World":
        root = Path(root).resolve()
        if not (root / layout.SETTINGS).is_file() or not (root / layout.MANIFEST).is_file():
            raise NotAWorldError(f"{root} holds no world (no {layout.SETTINGS}); make one with `capfilt world make`")
        recorded = json.loads((root / layout.SETTINGS).read_text())
        settings = WorldMakeSettings.model_validate({**recorded, "out": root})
        manifest = json.loads((root / layout.MANIFEST).read_text())
        return cls(root, settings, manifest)

    # ------------------------------------------------------------ scenes and truth

    @cached_property
    def scenes(self) -> dict[str, Scene]:
        """Every scene of every split (and clips), by image id."""
        out: dict[str, Scene] = {}
        with open(self.root / layout.SCENES) as f:
            for line in f:
                scene = Scene.from_json(json.loads(line))
                out[scene.image_id] = scene
        return out

    def scene(self, image_id: str) -> Scene:
        try:
            return self.scenes[image_id]
        except KeyError:
            raise KeyError(f"no scene {image_id!r} in {self.root}") from None

    def check(self, image: str | Scene, caption: str) -> CheckResult:
        """Whether every fact `caption` states is true of the image (an id or a Scene)."""
        return check(self.scene(image) if isinstance(image, str) else image, caption)

    def noise_ratio(self, image_ids: list[str], captions: list[str]) -> float:
        """Share of (image, caption) pairs whose caption is not true: BLIP's noise ratio."""
        if not captions:
            return 0.0
        return sum(not self.check(i, c).true for i, c in zip(image_ids, captions, strict=True)) / len(captions)

    # ------------------------------------------------------------ files

    def path(self, name: str) -> Path:
        """Absolute path of a table by name: web, web_labels, human, val, test, vqa, nlvr2,
        dialog, clips, clips_qa."""
        if name not in layout.TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(layout.TABLES)}")
        return self.root / layout.TABLES[name]

    def table(self, name: str) -> pa.Table:
        return pq.read_table(self.path(name))

    def image_path(self, image_id: str) -> Path:
        split = self.scene(image_id).split
        if split == "clips":
            raise KeyError(f"{image_id} is a clip; see clip_frames()")
        if split == "web":
            labels = self.web_labels
            fmt = labels[image_id]["format"]
        else:
            fmt = "png"
        return self.root / layout.image_relpath(split, image_id, fmt)

    def clip_frames(self, clip_id: str) -> list[Path]:
        return [self.root / layout.clip_frame_relpath(clip_id, f) for f in range(self.settings.clip_frames)]

    @cached_property
    def web_labels(self) -> dict[str, dict[str, Any]]:
        """Noise and expected fetch outcome of each web row, by key."""
        return {r["key"]: r for r in self.table("web_labels").to_pylist()}

    # ------------------------------------------------------------ urls

    def urls(self, base_url: str | None = None) -> pa.Table:
        """The web split (key, url, caption), its URLs pointing at `base_url` (default: the one
        the world was made for)."""
        web = self.table("web")
        if base_url is None or base_url.rstrip("/") == self.settings.base_url.rstrip("/"):
            return web
        old = self.settings.base_url.rstrip("/") + "/"
        new = base_url.rstrip("/") + "/"
        urls = pc.replace_substring(web["url"], old, new, max_replacements=1)
        return web.set_column(web.schema.get_field_index("url"), "url", urls)

    def write_urls(self, path: str | Path, base_url: str | None = None) -> Path:
        """The url list for img2dataset or the pipeline: .parquet or .csv (key, url, caption), or
        .txt (one url a line)."""
        path = Path(path)
        table = self.urls(base_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        elif path.suffix == ".csv":
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(table.column_names)
                writer.writerows(zip(*(table[c].to_pylist() for c in table.column_names)))
        elif path.suffix == ".txt":
            path.write_text("".join(u + "\n" for u in table["url"].to_pylist()))
        else:
            raise ValueError(f"{path}: url list must end in .parquet, .csv or .txt")
        return path

    def __repr__(self) -> str:
        return f"World({str(self.root)!r}, web={self.settings.size}, seed={self.settings.seed})"
