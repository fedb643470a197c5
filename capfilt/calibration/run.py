"""`capfilt calibrate` as a library call: settings in, a result, its JSON and its summary out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from capfilt.calibration.curve import CalibrationError, CalibrationResult, calibrate
from capfilt.calibration.inputs import LabelledScores, join_labels, read_labels, read_manifest, read_scores


class CalibrateSettings(BaseModel):
    """Find the ITM threshold that reaches a precision target on a labelled sample."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scores: str = Field(description="Bootstrap output folder, local or an fsspec URL such as s3://bucket/run "
                                    "(its committed parquet/*.parquet, with web_itm).")
    labels: Path = Field(description="Labels: .parquet/.csv/.jsonl with key and noise (or clean), "
                                     "or a toy world folder.")
    precision: float = Field(gt=0, le=1, description="Target share of kept web captions that are clean.")
    output: Path | None = Field(None, description="Write the result and the full precision/recall curve "
                                                  "here as JSON.")

    @field_validator("scores", mode="before")
    @classmethod
    def _scores_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


def run_calibration(settings: CalibrateSettings) -> tuple[CalibrationResult, LabelledScores, dict[str, Any]]:
    """(result, the joined sample, the JSON document); writes the JSON when settings.output is set.

    Raises CalibrationError (PrecisionUnreachable among them) with a message for the user."""
    joined = join_labels(read_scores(settings.scores), read_labels(settings.labels))
    if not joined.keys:
        raise CalibrationError(f"no row is both ok, labelled and scored; skipped: {_skips(joined)}")
    result = calibrate(joined.scores, joined.clean, settings.precision)
    bootstrap_threshold = read_manifest(settings.scores).get("settings", {}).get("threshold")
    document = {
        **result.to_dict(),
        "bootstrap_threshold": None if bootstrap_threshold is None else {
            **result.curve.at(float(bootstrap_threshold))},
        "sample": joined.summary(),
        "scores": str(settings.scores),
        "labels": str(settings.labels),
    }
    if settings.output is not None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        settings.output.write_text(json.dumps(document, indent=1) + "\n")
    return result, joined, document


def _skips(joined: LabelledScores) -> str:
    parts = []
    for reason, n in joined.skipped.items():
        detail = ""
        if reason == "status not ok" and joined.not_ok:
            detail = " (" + ", ".join(f"{s} {c}" for s, c in joined.not_ok.items()) + ")"
        parts.append(f"{n} {reason}{detail}")
    return ", ".join(parts)


def summary_text(result: CalibrationResult, joined: LabelledScores, document: dict[str, Any]) -> str:
    """The lines a person reads after `capfilt calibrate`."""
    lines = [
        f"{'rows read':<24}{joined.rows:>10}",
        f"{'rows skipped':<24}{sum(joined.skipped.values()):>10}  {_skips(joined)}",
        f"{'rows used':<24}{len(joined.keys):>10}  ({result.clean_total} clean, "
        f"{result.total - result.clean_total} noisy)",
    ]
    if joined.labels_without_row:
        lines.append(f"{'labels without a row':<24}{joined.labels_without_row:>10}")
    lines += [
        f"{'target precision':<24}{result.target_precision:>10.4f}",
        f"{'threshold':<24}{result.threshold:>10.6f}  (keep web captions with ITM >= this)",
        f"{'precision':<24}{result.precision:>10.4f}",
        f"{'recall':<24}{result.recall:>10.4f}",
        f"{'kept':<24}{result.kept:>10}  of {result.total}",
    ]
    at = document.get("bootstrap_threshold")
    if at:
        lines.append(f"{'bootstrap threshold':<24}{at['threshold']:>10.6f}  (precision {at['precision']:.4f}, "
                     f"recall {at['recall']:.4f}, kept {at['kept']})")
    return "\n".join(lines)
