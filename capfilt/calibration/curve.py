"""The ITM threshold that reaches a precision target on labelled web captions.

A caption is kept when its ITM probability is >= the threshold (as the filter stage decides).
Precision is the share of kept captions that are clean; recall the share of clean captions kept.
Every distinct score is a candidate threshold: a threshold between two neighbouring scores keeps
the same captions as the higher one, so the curve is exact at those points and flat between them.

Precision is not monotone in the threshold; recall is (it only falls as the threshold rises).
The smallest threshold whose precision reaches the target is therefore also the one with the
highest recall among those that reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Precision is a ratio of counts; a target written as a decimal (0.9) must count as reached by
# 9/10 whatever the float rounding of either side.
_TOLERANCE = 1e-12


class CalibrationError(ValueError):
    """The inputs cannot give a threshold; `str()` says why, in one line."""


class PrecisionUnreachable(CalibrationError):
    """No threshold reaches the target; carries the best precision there is."""

    def __init__(self, target: float, best_precision: float, best_threshold: float | None):
        self.target = target
        self.best_precision = best_precision
        self.best_threshold = best_threshold
        where = "" if best_threshold is None else f" (at threshold {best_threshold:.6g})"
        super().__init__(f"precision {target:g} is unreachable: the best any threshold gives is "
                         f"{best_precision:.4f}{where}")


@dataclass(frozen=True)
class Curve:
    """Precision and recall at every distinct score, thresholds in ascending order."""

    thresholds: np.ndarray  # (T,) float, ascending
    precision: np.ndarray  # (T,) share of kept that are clean
    recall: np.ndarray  # (T,) share of clean that are kept
    kept: np.ndarray  # (T,) int, captions with score >= threshold
    clean_kept: np.ndarray  # (T,) int
    total: int
    clean_total: int

    def at(self, threshold: float) -> dict[str, float | int]:
        """Precision, recall and kept count of keeping scores >= `threshold` (any value)."""
        i = int(np.searchsorted(self.thresholds, threshold, side="left"))
        if i == len(self.thresholds):  # above every score: nothing kept
            return {"threshold": float(threshold), "precision": float("nan"), "recall": 0.0, "kept": 0}
        return {"threshold": float(threshold), "precision": float(self.precision[i]),
                "recall": float(self.recall[i]), "kept": int(self.kept[i])}

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds.tolist(), "precision": self.precision.tolist(),
                "recall": self.recall.tolist(), "kept": self.kept.tolist(),
                "total": self.total, "clean_total": self.clean_total}


@dataclass(frozen=True)
class CalibrationResult:
    target_precision: float
    threshold: float
    precision: float
    recall: float
    kept: int
    total: int
    clean_total: int
    curve: Curve

    def to_dict(self) -> dict[str, Any]:
        return {"target_precision": self.target_precision, "threshold": self.threshold,
                "precision": self.precision, "recall": self.recall, "kept": self.kept,
                "total": self.total, "clean_total": self.clean_total, "curve": self.curve.to_dict()}


def _checked(scores: Any, clean: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(clean).reshape(-1)
    if s.size == 0 and c.size == 0:
        raise CalibrationError("no scored captions to calibrate on")
    if c.dtype != np.bool_:
        raise CalibrationError(f"clean must be a bool array, got dtype {c.dtype}")
    if s.shape != c.shape:
        raise CalibrationError(f"scores ({s.size}) and clean ({c.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise CalibrationError(f"{int(np.sum(~np.isfinite(s)))} scores are NaN or infinite")
    return s, c


def precision_recall_curve(scores: Any, clean: Any) -> Curve:
    """The exact curve of keeping `scores >= t`, at every distinct score t."""
    s, c = _checked(scores, clean)
    order = np.argsort(-s, kind="stable")  # descending
    s_desc, c_desc = s[order], c[order]
    kept = np.arange(1, s.size + 1)
    clean_kept = np.cumsum(c_desc)
    # only the last of a run of equal scores is a real cut: `>= t` keeps the whole run
    last = np.r_[s_desc[1:] != s_desc[:-1], True]
    thresholds, kept, clean_kept = s_desc[last][::-1], kept[last][::-1], clean_kept[last][::-1]
    clean_total = int(c.sum())
    precision = clean_kept / kept
    recall = clean_kept / clean_total if clean_total else np.zeros_like(precision)
    return Curve(thresholds=thresholds, precision=precision, recall=recall, kept=kept.astype(np.int64),
                 clean_kept=clean_kept.astype(np.int64), total=int(s.size), clean_total=clean_total)


def threshold_for_precision(curve: Curve, precision: float) -> int:
    """Index into `curve` of the smallest threshold whose precision reaches `precision`."""
    if not 0.0 < precision <= 1.0:
        raise CalibrationError(f"precision target must lie in (0, 1], got {precision}")
    reached = np.flatnonzero(curve.precision >= precision - _TOLERANCE)
    if reached.size == 0:
        best = int(np.argmax(curve.precision))
        raise PrecisionUnreachable(precision, float(curve.precision[best]),
                                   float(curve.thresholds[best]) if curve.clean_total else None)
    return int(reached[0])


def calibrate(scores: Any, clean: Any, precision: float) -> CalibrationResult:
    """The smallest ITM threshold whose kept web captions are at least `precision` clean.

    `scores`: ITM probabilities of web captions; `clean`: bool, the caption matches its image.
    Raises PrecisionUnreachable when no threshold reaches the target, CalibrationError on bad input.
    """
    curve = precision_recall_curve(scores, clean)
    i = threshold_for_precision(curve, precision)
    return CalibrationResult(target_precision=float(precision), threshold=float(curve.thresholds[i]),
                             precision=float(curve.precision[i]), recall=float(curve.recall[i]),
                             kept=int(curve.kept[i]), total=curve.total, clean_total=curve.clean_total,
                             curve=curve)
