"""The report's plots, each a PNG as a data: URI.

Figures are made with matplotlib's object API and the Agg canvas, never pyplot: no global state,
no display, and a library call that leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from capfilt.calibration.curve import Curve
from capfilt.report.data import ReportData, RoundEntry

CLEAN_COLOUR = "#1a7f37"
NOISY_COLOUR = "#cf222e"
NEUTRAL_COLOUR = "#0969da"
THRESHOLD_COLOUR = "#444444"
BINS = np.linspace(0.0, 1.0, 41)
DPI = 100


def png_data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no Software/date metadata: the same data gives the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _threshold_line(ax, threshold: float) -> None:  # noqa: ANN001 - matplotlib Axes
    ax.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2,
               label=f"threshold {threshold:.3g}")


def _histogram(ax, series: Sequence[tuple[str, np.ndarray, str]], threshold: float, title: str) -> None:  # noqa: ANN001
    for label, values, colour in series:
        if values.size:
            ax.hist(values, bins=BINS, histtype="stepfilled", alpha=0.35, color=colour, edgecolor=colour,
                    linewidth=1.2, label=f"{label} ({values.size})")
        else:
            ax.plot([], [], color=colour, label=f"{label} (none)")
    _threshold_line(ax, threshold)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ITM probability (match)")
    ax.set_ylabel("captions")
    ax.set_title(title)
    ax.legend(loc="upper center", fontsize=8)


def score_histograms(data: ReportData) -> str:
    """Web caption scores (clean vs noisy when labelled, else all) beside synthetic caption scores."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    web_ax, syn_ax = fig.subplots(1, 2)
    if data.labelled is not None:
        s, c = data.labelled.scores, data.labelled.clean
        _histogram(web_ax, [("clean", s[c], CLEAN_COLOUR), ("noisy", s[~c], NOISY_COLOUR)], data.threshold,
                   "web captions, by label")
    else:
        _histogram(web_ax, [("all web captions", data.web_scores, NEUTRAL_COLOUR)], data.threshold,
                   "web captions (no labels given)")
    _histogram(syn_ax, [("synthetic captions", data.synthetic_scores, NEUTRAL_COLOUR)], data.threshold,
               "synthetic captions")
    return png_data_uri(fig)


def _kept_share(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    if not scores.size:
        return np.zeros_like(grid)
    ordered = np.sort(scores)
    return 1.0 - np.searchsorted(ordered, grid, side="left") / scores.size


def threshold_sweep(data: ReportData) -> str:
    """Precision and recall of web captions against the threshold (labelled), and the share kept."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    pr_ax, kept_ax = fig.subplots(1, 2)
    curve: Curve | None = data.curve
    if curve is not None:
        # a threshold t keeps the same captions as the smallest score >= t: the value at each score
        # holds from the score below it up to that score (a "pre" step), and from 0 to the lowest
        xs = np.r_[0.0, curve.thresholds]
        pr_ax.step(xs, np.r_[curve.precision[:1], curve.precision], where="pre", color=CLEAN_COLOUR,
                   label="precision")
        pr_ax.step(xs, np.r_[curve.recall[:1], curve.recall], where="pre", color=NOISY_COLOUR, label="recall")
        _threshold_line(pr_ax, data.threshold)
        pr_ax.set_title("web captions: precision and recall")
        pr_ax.legend(loc="lower left", fontsize=8)
    else:
        pr_ax.text(0.5, 0.5, "precision and recall need labels\n(capfilt report DIR --labels FILE)",
                   ha="center", va="center", transform=pr_ax.transAxes)
        pr_ax.set_title("web captions: precision and recall")
    pr_ax.set_xlim(0, 1)
    pr_ax.set_ylim(0, 1.02)
    pr_ax.set_xlabel("threshold (keep ITM >= threshold)")
    grid = np.linspace(0, 1, 201)
    kept_ax.plot(grid, _kept_share(data.web_scores, grid), color=NEUTRAL_COLOUR, label="web captions")
    kept_ax.plot(grid, _kept_share(data.synthetic_scores, grid), color="#8250df", label="synthetic captions")
    _threshold_line(kept_ax, data.threshold)
    kept_ax.set_xlim(0, 1)
    kept_ax.set_ylim(0, 1.02)
    kept_ax.set_xlabel("threshold (keep ITM >= threshold)")
    kept_ax.set_ylabel("share kept")
    kept_ax.set_title("share of captions kept")
    kept_ax.legend(loc="lower left", fontsize=8)
    return png_data_uri(fig)


def numeric_metrics(rounds: list[RoundEntry]) -> list[str]:
    """Names of the metrics that hold a number in some round, in first-seen order."""
    names: dict[str, None] = {}
    for r in rounds:
        for name, value in r.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                names.setdefault(name, None)
    return list(names)


def rounds_plot(rounds: list[RoundEntry]) -> str | None:
    """One small panel per numeric metric, against the round; None when there is none."""
    names = numeric_metrics(rounds)
    if not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, name in zip(axes, names):
        points = [(r.round, r.metrics[name]) for r in rounds
                  if isinstance(r.metrics.get(name), (int, float)) and not isinstance(r.metrics.get(name), bool)]
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", color=NEUTRAL_COLOUR)
        ax.set_title(name, fontsize=9, parse_math=False)  # a name is text, never mathtext
        ax.set_xlabel("round")
        ax.set_xticks(sorted({r.round for r in rounds}))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return png_data_uri(fig)
