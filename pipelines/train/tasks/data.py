"""Downstream task data: Parquet files in the toy world's format, read and checked on the driver.

One row per example; image paths are absolute, or relative to the Parquet file's folder or to
the folder above it (the toy world's tasks/*.parquet name them from the world's root). The
fields each task needs (README: "Downstream task data"):

  vqa       split, image, question, answers (list of str, one per annotator; question_id optional)
  nlvr2     split, left_image, right_image, statement, label (bool)
  dialog    split, image, caption, rounds (list of {question, answer, candidates, answer_index})
  clips     split, clip_id, frames (list of image paths, in order), captions (list of str)
  clips_qa  split, clip_id, question, answers; frames from a clips file given beside it

Everything that can be wrong is found here, before any training or scoring: a missing field, a
value of the wrong type, an image that does not open, an empty split; the message names the file
and the row. Only text and paths are kept; images are read by whoever uses them (the training
workers, the evaluation), so a split's images never pass through the driver.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow.parquet as pq
from PIL import Image

from pipelines.train.data import DataError, resolve_sources

TASK_FILES = ("vqa", "nlvr2", "dialog", "clips", "clips_qa")


@dataclass(frozen=True)
class Where:
    file: str
    row: int
    part: str = ""  # inside the row, e.g. "rounds[2]"

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}" + (f": {self.part}" if self.part else "")


def _fail(where: Where, message: str) -> DataError:
    return DataError(f"data: {where}: {message}")


def _text(row: dict, key: str, where: Where) -> str:
    value = row.get(key)
    if value is None:
        raise _fail(where, f"missing field '{key}'")
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"field '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


def _texts(row: dict, key: str, where: Where) -> list[str]:
    value = row.get(key)
    if value is None:
        raise _fail(where, f"missing field '{key}'")
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, f"field '{key}' must be a non-empty list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


def _image(row: dict, key: str, where: Where, folder: str, checked: dict[str, str | None]) -> str:
    """The image's absolute path, once checked to open."""
    relative = _text(row, key, where)
    path = relative if posixpath.isabs(relative) else posixpath.join(folder, relative)
    if not posixpath.isabs(relative) and not Path(path).exists():
        # the toy world's tasks/*.parquet name images from the world's root, the folder above
        above = posixpath.join(posixpath.dirname(folder), relative)
        path = above if Path(above).exists() else path
    if path not in checked:
        try:
            with Image.open(path) as image:
                image.verify()
            checked[path] = None
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the row is unusable
            checked[path] = f"{type(exc).__name__}: {exc}"
    if checked[path] is not None:
        raise _fail(where, f"image '{relative}' ({key}) does not open: {checked[path]}")
    return path


def _vqa(row: dict, where: Where, folder: str, checked: dict) -> dict[str, Any]:
    return {"image": _image(row, "image", where, folder, checked), "question": _text(row, "question", where),
            "answers": _texts(row, "answers", where), "question_id": str(row.get("question_id") or where)}


def _nlvr2(row: dict, where: Where, folder: str, checked: dict) -> dict[str, Any]:
    label = row.get("label")
    if not isinstance(label, bool):
        raise _fail(where, "missing field 'label'" if label is None else f"field 'label' must be true/false, got {label!r}")
    return {"left_image": _image(row, "left_image", where, folder, checked),
            "right_image": _image(row, "right_image", where, folder, checked),
            "statement": _text(row, "statement", where), "label": label}


def _dialog(row: dict, where: Where, folder: str, checked: dict) -> dict[str, Any]:
    rounds = row.get("rounds")
    if rounds is None:
        raise _fail(where, "missing field 'rounds'")
    if not isinstance(rounds, (list, tuple)) or not rounds:
        raise _fail(where, f"field 'rounds' must be a non-empty list, got {rounds!r}")
    clean = []
    for j, r in enumerate(rounds):
        inner = Where(where.file, where.row, f"rounds[{j}]")
        if not isinstance(r, dict):
            raise _fail(inner, "must be a mapping")
        question, answer = _text(r, "question", inner), _text(r, "answer", inner)
        candidates = _texts(r, "candidates", inner)
        index = r.get("answer_index")
        if not isinstance(index, int) or not 0 <= index < len(candidates) or candidates[index] != answer:
            raise _fail(inner, f"'answer_index' {index!r} does not point at the answer {answer!r} "
                               f"among {len(candidates)} candidates")
        clean.append({"question": question, "answer": answer, "candidates": candidates, "answer_index": index})
    return {"image": _image(row, "image", where, folder, checked), "caption": _text(row, "caption", where),
            "rounds": clean}


def _clips(row: dict, where: Where, folder: str, checked: dict) -> dict[str, Any]:
    frames = _texts(row, "frames", where)
    paths = [_image({"frame": f}, "frame", where, folder, checked) for f in frames]
    return {"clip_id": _text(row, "clip_id", where), "frames": paths, "captions": _texts(row, "captions", where)}


def _clips_qa(row: dict, where: Where, folder: str, checked: dict) -> dict[str, Any]:
    return {"clip_id": _text(row, "clip_id", where), "question": _text(row, "question", where),
            "answers": _texts(row, "answers", where), "question_id": str(row.get("question_id") or where)}


READERS: dict[str, Callable[[dict, Where, str, dict], dict[str, Any]]] = {
    "vqa": _vqa, "nlvr2": _nlvr2, "dialog": _dialog, "clips": _clips, "clips_qa": _clips_qa,
}


def _local_files(paths: Sequence[str]) -> list[str]:
    files = []
    for source in resolve_sources(paths):
        if source.kind != "parquet" or not source.local:
            raise DataError(f"data: task data is local Parquet; {source.path} is not")
        files += list(source.files)
    return files


def read_task(kind: str, paths: Sequence[str], split: str | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The checked rows of `split` (None: every split) of task `kind` in `paths`."""
    if kind not in READERS:
        raise ValueError(f"unknown task data {kind!r}; known: {', '.join(READERS)}")
    rows: list[dict[str, Any]] = []
    checked: dict[str, str | None] = {}
    files = _local_files(paths)
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
            raise DataError(f"data: {file}: not a readable Parquet file: {exc}") from None
        if split is not None and "split" not in table.column_names:
            raise DataError(f"data: {file}: missing field 'split' (every row of task data names its split)")
        folder = posixpath.dirname(str(Path(file).absolute()))
        for i, row in enumerate(table.to_pylist()):
            if split is not None and row.get("split") != split:
                continue
            if limit is not None and len(rows) >= limit:
                break
            rows.append(READERS[kind](row, Where(file, i), folder, checked))
    if not rows:
        where = f"split '{split}'" if split is not None else "any split"
        raise DataError(f"data: no {kind} rows of {where} in {', '.join(files)}")
    return rows


def video_qa_rows(paths: Sequence[str], split: str | None, limit: int | None = None) -> list[dict[str, Any]]:
    """clips_qa rows with their clip's frames: `paths` holds the question file(s) and the clips
    file(s) (told apart by their fields)."""
    files = _local_files(paths)
    qa_files = [f for f in files if "question" in pq.read_schema(f).names]
    clip_files = [f for f in files if "frames" in pq.read_schema(f).names]
    if not qa_files or not clip_files:
        raise DataError(f"data: video QA needs a questions file (clips_qa: clip_id, question, answers) and a clips "
                        f"file (clips: clip_id, frames); got {', '.join(files)}")
    clips = {c["clip_id"]: c for c in read_task("clips", clip_files, None)}
    rows = read_task("clips_qa", qa_files, split, limit)
    for r in rows:
        if r["clip_id"] not in clips:
            raise DataError(f"data: {r['question_id']}: clip '{r['clip_id']}' is in none of {', '.join(clip_files)}")
        r["frames"] = clips[r["clip_id"]]["frames"]
    return rows


def dialog_rounds(dialogs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One example per round: image, caption, the earlier rounds (question, answer), the round."""
    out = []
    for d in dialogs:
        for j, r in enumerate(d["rounds"]):
            out.append({"image": d["image"], "caption": d["caption"],
                        "history": [[p["question"], p["answer"]] for p in d["rounds"][:j]], **r})
    return out
