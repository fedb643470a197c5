"""What the report shows, gathered from a bootstrap output folder, labels and rounds.json.

Everything here is plain data (no HTML, no plots), so that tests can check it apart from the page.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from capfilt.calibration.curve import (CalibrationError, Curve, PrecisionUnreachable, precision_recall_curve,
                                      threshold_for_precision)
from capfilt.calibration.inputs import (OK, Labels, LabelledScores, join_labels, read_images, read_labels,
                                        read_manifest, read_scores)

DEFAULT_THRESHOLD = 0.5  # the bootstrap's default, for an output folder without a manifest
THUMBNAIL = 256  # px, longest side of an example's image in the page
PRECISION_TARGETS = (0.8, 0.9, 0.95, 0.99)


class RoundEntry(BaseModel):
    # rounds.json records more (inputs, settings, hashes); the report reads only these
    model_config = ConfigDict(extra="ignore", frozen=True)
    round: int
    metrics: dict[str, Any] = {}


class RoundsFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    rounds: list[RoundEntry]


def read_rounds(path: Path) -> list[RoundEntry]:
    """`{"rounds": [{"round": r, "metrics": {name: value}}, ...]}`, ordered by round."""
    try:
        parsed = RoundsFile.model_validate(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read rounds: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CalibrationError(f"{path}: not a rounds file ({where}: {first['msg']}); expected "
                               '{"rounds": [{"round": 0, "metrics": {"name": value}}]}') from None
    return sorted(parsed.rounds, key=lambda r: r.round)


@dataclass(frozen=True)
class Caption:
    text: str | None
    itm: float | None
    kept: bool


@dataclass(frozen=True)
class Example:
    """One image and its captions, as in BLIP's Figure 4."""

    key: str
    image: bytes | None  # JPEG/PNG bytes the browser can show, or None when undecodable or not stored
    image_mime: str
    web: Caption
    synthetic: tuple[Caption, ...]
    noise: str | None  # the label's noise kind, when labels were given
    # False when the output holds no image for the row: the tars store kept pairs' images only
    # (unless --parquet-images), so a row with nothing kept has none
    image_stored: bool = True


@dataclass
class ReportData:
    name: str
    threshold: float
    rows: int
    status: dict[str, int]
    kept_web: int
    kept_synthetic: int
    synthetic_total: int
    web_scores: np.ndarray  # every ok row's web ITM
    synthetic_scores: np.ndarray  # every synthetic caption's ITM
    examples: list[Example]
    labelled: LabelledScores | None = None
    curve: Curve | None = None
    calibrated: dict[float, dict[str, float] | None] = field(default_factory=dict)  # target -> point
    by_noise: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[RoundEntry] | None = None


def _image_for_page(data: bytes) -> tuple[bytes | None, str]:
    """Bytes a browser can decode (a thumbnail when large) and their MIME type, or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format
            if fmt in ("JPEG", "PNG") and max(img.size) <= THUMBNAIL:
                return data, f"image/{fmt.lower()}"
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            return buf.getvalue(), "image/jpeg"
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes; the page says so instead
        return None, ""


def _interleave(*queues: list[Any]) -> list[Any]:
    out: list[Any] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        out += [q[depth] for q in queues if depth < len(q)]
    return out


def pick_examples(rows: list[dict[str, Any]], labels: Labels | None, n: int) -> list[dict[str, Any]]:
    """`n` ok rows: each noise kind in turn (when labelled), and within a kind dropped and kept web
    captions in turn, in key order, so that the few examples shown cover what happened."""
    kinds: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = defaultdict(lambda: ([], []))
    for row in rows:
        if row["status"] == OK:
            kind = labels.noise.get(row["key"], "unlabelled") if labels else ""
            kinds[kind][bool(row["web_kept"])].append(row)
    picked = _interleave(*(_interleave(*kinds[k]) for k in sorted(kinds)))[:n]
    return sorted(picked, key=lambda r: r["key"])


def _example(row: dict[str, Any], image: bytes | None, labels: Labels | None) -> Example:
    page_image, mime = _image_for_page(image) if image else (None, "")
    synthetic = tuple(
        Caption(text, itm, bool(kept))
        for text, itm, kept in zip(row["synthetic_captions"] or [], row["synthetic_itm"] or [],
                                   row["synthetic_kept"] or [])
    )
    return Example(key=row["key"], image=page_image, image_mime=mime, image_stored=image is not None,
                   web=Caption(row["web_caption"], row["web_itm"], bool(row["web_kept"])),
                   synthetic=synthetic, noise=labels.noise.get(row["key"]) if labels else None)


def _by_noise(labelled: LabelledScores, threshold: float) -> list[dict[str, Any]]:
    kinds: dict[str, list[float]] = defaultdict(list)
    for kind, score in zip(labelled.noise, labelled.scores):
        kinds[kind].append(float(score))
    return [{"noise": kind, "rows": len(s), "mean_itm": float(np.mean(s)),
             "kept_share": float(np.mean(np.asarray(s) >= threshold))} for kind, s in sorted(kinds.items())]


def gather(scores_dir: Path, labels_path: Path | None = None, rounds_path: Path | None = None,
           examples: int = 12, threshold: float | None = None) -> ReportData:
    """Everything the report shows. Raises CalibrationError on unreadable inputs."""
    scores_dir = Path(scores_dir)
    table = read_scores(scores_dir)
    rows = table.to_pylist()
    manifest = read_manifest(scores_dir)
    if threshold is None:
        threshold = float(manifest.get("settings", {}).get("threshold", DEFAULT_THRESHOLD))
    labels = read_labels(labels_path) if labels_path is not None else None
    chosen = pick_examples(rows, labels, examples)
    images = read_images(scores_dir, [r["key"] for r in chosen])
    ok = [r for r in rows if r["status"] == OK]
    data = ReportData(
        name=scores_dir.resolve().name,
        threshold=threshold,
        rows=len(rows),
        status=dict(sorted(Counter(r["status"] for r in rows).items())),
        kept_web=sum(bool(r["web_kept"]) for r in rows),
        kept_synthetic=sum(sum(bool(k) for k in r["synthetic_kept"] or []) for r in rows),
        synthetic_total=sum(len(r["synthetic_captions"] or []) for r in rows),
        web_scores=np.asarray([r["web_itm"] for r in ok if r["web_itm"] is not None], dtype=np.float64),
        synthetic_scores=np.asarray([s for r in ok for s in r["synthetic_itm"] or [] if s is not None],
                                    dtype=np.float64),
        examples=[_example(r, images.get(r["key"]), labels) for r in chosen],
    )
    if labels is not None:
        labelled = join_labels(table, labels)
        data.labelled = labelled
        if labelled.keys:
            data.curve = precision_recall_curve(labelled.scores, labelled.clean)
            data.by_noise = _by_noise(labelled, threshold)
            for target in PRECISION_TARGETS:
                try:
                    i = threshold_for_precision(data.curve, target)
                    data.calibrated[target] = data.curve.at(float(data.curve.thresholds[i]))
                except PrecisionUnreachable:
                    data.calibrated[target] = None
    if rounds_path is not None:
        data.rounds = read_rounds(rounds_path)
    return data
