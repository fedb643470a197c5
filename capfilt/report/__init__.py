"""`capfilt report`: one static, self-contained HTML page about a bootstrap output folder.

    from capfilt.report import ReportSettings, write_report
    path = write_report(ReportSettings(dir=out, labels=world))

`rounds` calls `write_report` too, with the round's folder and its rounds.json.
"""

from __future__ import annotations

from pathlib import Path

from capfilt.report.data import ReportData, gather, read_rounds
from capfilt.report.page import render
from capfilt.report.settings import ReportSettings
from model.atomic_write import replace_file

__all__ = ["ReportData", "ReportSettings", "build_report", "gather", "read_rounds", "render", "write_report"]


def build_report(settings: ReportSettings) -> str:
    """The page's HTML. Raises capfilt.calibration.CalibrationError on unreadable inputs."""
    return render(gather(settings.dir, settings.labels, settings.rounds_path, settings.examples, settings.threshold))


def write_report(settings: ReportSettings) -> Path:
    """Writes the page (atomically: a reader never sees half of it) and returns its path."""
    page = build_report(settings)
    return replace_file(settings.output_path, page)
