"""`capfilt calibrate`: the ITM threshold that reaches a precision target on labelled scores."""

from __future__ import annotations

import typer

from capfilt.calibration import CalibrationError
from capfilt.calibration.run import CalibrateSettings, run_calibration, summary_text
from capfilt.settings_cli import settings_command

EXIT_FAILED = 1


def register(app: typer.Typer) -> None:
    @settings_command(app, "calibrate", CalibrateSettings)
    def calibrate(settings: CalibrateSettings) -> None:
        """The smallest ITM threshold whose kept web captions reach --precision, with the PR curve."""
        try:
            result, joined, document = run_calibration(settings)
        except CalibrationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo(summary_text(result, joined, document))
        if settings.output is not None:
            typer.echo(f"{'written':<24}{settings.output}")
