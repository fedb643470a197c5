"""`capfilt report DIR`: a static HTML page of examples, score histograms, threshold sweeps, rounds."""

from __future__ import annotations

import typer

from capfilt.calibration import CalibrationError
from capfilt.report.settings import ReportSettings
from capfilt.settings_cli import settings_command

EXIT_FAILED = 1


def register(app: typer.Typer) -> None:
    @settings_command(app, "report", ReportSettings, positional=["dir"])
    def report(settings: ReportSettings) -> None:
        """Write one self-contained HTML page about the bootstrap output in DIR; print its path."""
        from capfilt.report import write_report  # matplotlib's import is slow; only this command needs it

        try:
            path = write_report(settings)
        except CalibrationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo(str(path))
