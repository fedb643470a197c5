"""Rows of the formats training reads -> (image bytes, caption, image key) pairs, one per caption.

Plain functions over Ray Data batch dicts, testable on hand-made batches:
  - bootstrap output Parquet: rows with status "ok"; the web caption when `web_kept`, and every
    synthetic caption whose `synthetic_kept` is true;
  - toy-world splits and other Parquet: image bytes (`image`, `jpg`, `png`) or an image path
    (`image` as text, `image_path`, `file`, ...; relative to the Parquet file's folder) and `captions` (a list) or
    `caption` (one string);
  - WebDataset samples (bootstrap's or img2dataset's): the image entry and `txt`, which holds one
    caption (an empty one gives no pair); the image key is the `json` entry's "key" (the row key:
    bootstrap's samples `k_web` and `k_syn0` are one image, which ITC and ITM must know), else
    `__key__`; a `json` whose status is not "ok"/"success" (img2dataset's failures) drops the sample.

Image paths are read through an fsspec filesystem when one is given (a Parquet split on object
storage), from the local disk otherwise.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.bootstrap.schema import OK

IMAGE_BYTE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "image_bytes")
IMAGE_PATH_COLUMNS = ("image_path", "file", "file_name", "filepath", "image_file")
KEY_COLUMNS = ("key", "image_id", "__key__", "id")
OK_STATUSES = {OK, "success", None}

PAIR_COLUMNS = ("image", "caption", "image_key")


def _column(batch: dict[str, np.ndarray], names: Iterable[str]) -> tuple[str, np.ndarray] | None:
    for name in names:
        if name in batch:
            return name, batch[name]
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [value]


def _image_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Arrow struct {bytes, path}, as HF datasets store images
        value = value.get("bytes")
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None
    return None


def row_captions(batch: dict[str, np.ndarray], i: int) -> list[str]:
    """The captions row `i` holds that are kept (each becomes one pair)."""
    captions: list[str] = []
    if "web_caption" in batch:  # bootstrap output
        kept = batch.get("web_kept")
        if kept is None or bool(kept[i]):
            captions.append(_text(batch["web_caption"][i]))
        synthetic = _as_list(batch["synthetic_captions"][i]) if "synthetic_captions" in batch else []
        flags = _as_list(batch["synthetic_kept"][i]) if "synthetic_kept" in batch else [True] * len(synthetic)
        captions += [_text(c) for c, keep in zip(synthetic, flags) if keep]
    elif "captions" in batch:
        captions = [_text(c) for c in _as_list(batch["captions"][i])]
    elif "caption" in batch:
        captions = [_text(batch["caption"][i])]
    elif "txt" in batch:  # WebDataset: one caption per sample (OpenCLIP's and img2dataset's convention)
        captions = [_text(batch["txt"][i])]
    elif "text" in batch:
        captions = [_text(batch["text"][i])]
    return [c for c in (c.strip() for c in captions) if c]


def sample_meta(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """A WebDataset sample's `json` entry as a dict ({} when absent or unreadable)."""
    value = batch["json"][i] if "json" in batch else None
    if isinstance(value, dict):  # a reader that decoded it already
        return value
    if value is None:
        return {}
    try:
        meta = json.loads(_text(value) or "{}")
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _row_ok(batch: dict[str, np.ndarray], i: int, meta: dict[str, Any]) -> bool:
    if "status" in batch and batch["status"][i] not in OK_STATUSES:
        return False
    return meta.get("status") in OK_STATUSES  # img2dataset's and bootstrap's per-sample status


def _read_path(path: str, fs: Any) -> bytes | None:
    try:
        return fs.cat_file(path) if fs is not None else Path(path).read_bytes()
    except OSError:
        return None


def rows_to_pairs(batch: dict[str, np.ndarray], fs: Any = None) -> dict[str, np.ndarray]:
    """A batch of any supported format -> columns image (bytes), caption, image_key.

    Image paths are read here, relative to the folder of the file the row came from (the
    `path` column that Ray Data's `include_paths` adds), through `fs` (an fsspec filesystem,
    whose paths the `path` column holds) when given, else from the local disk."""
    n = len(next(iter(batch.values()))) if batch else 0
    images: list[bytes] = []
    captions: list[str] = []
    keys: list[str] = []
    byte_col = _column(batch, IMAGE_BYTE_COLUMNS)
    path_col = _column(batch, IMAGE_PATH_COLUMNS)
    key_col = _column(batch, KEY_COLUMNS)
    sources = batch.get("path")
    for i in range(n):
        meta = sample_meta(batch, i)
        if not _row_ok(batch, i, meta):
            continue
        texts = row_captions(batch, i)
        if not texts:
            continue
        value = byte_col[1][i] if byte_col is not None else None
        data = _image_bytes(value)
        if data is None and isinstance(value, str):  # the toy world's splits: `image` is a path
            path_value: Any = value
        else:
            path_value = path_col[1][i] if path_col is not None else None
        if data is None and path_value:
            image_path = _text(path_value)
            if not posixpath.isabs(image_path) and sources is not None:
                image_path = posixpath.join(posixpath.dirname(str(sources[i])), image_path)
            data = _read_path(image_path, fs)
        if data is None:
            continue
        key = _text(meta.get("key")) or (_text(key_col[1][i]) if key_col is not None else "")
        if not key:
            key = f"{_text(sources[i]) if sources is not None else ''}#{i}"
        for text in texts:
            images.append(data)
            captions.append(text)
            keys.append(key)
    out_images = np.empty(len(images), dtype=object)
    out_images[:] = images
    return {"image": out_images, "caption": np.asarray(captions, dtype=object),
            "image_key": np.asarray(keys, dtype=object)}


def _rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited onto white, as model/preprocess.py's to_rgb does (not
    imported: it would pull transformers into every Ray Data task process)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, size: int) -> np.ndarray | None:
    """Encoded image -> (size, size, 3) uint8, bicubic like model/preprocess.py; None if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = _rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), resample=Image.Resampling.BICUBIC)
            return np.asarray(rgb, dtype=np.uint8)
    except Exception:  # any broken file is one dropped pair, not a failed job
        return None


class DecodeImages:
    """Ray Data stage: image bytes -> uint8 (S, S, 3) arrays; undecodable rows are dropped."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = [decode_image(b, self.image_size) for b in batch["image"]]
        keep = [i for i, a in enumerate(decoded) if a is not None]
        size = self.image_size
        images = np.stack([decoded[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
        return {"image": images,
                "caption": np.asarray([batch["caption"][i] for i in keep], dtype=object),
                "image_key": np.asarray([batch["image_key"][i] for i in keep], dtype=object)}
