"""`capfilt rounds`: the bootstrapping loop, then its report.

Flags: the loop's own (`--web`, `--human`, `--eval`, `--rounds`, `--output`, `--preset`, ...) and
every knob of the jobs it runs, prefixed by its section: `--pretrain-max-steps`, `--caption-lr`,
`--filter-lr`, `--bootstrap-top-p`, `--evaluate-k-test` (see pipelines/rounds/settings.py). In
`--config FILE.yaml` the sections are sub-mappings:

    web: urls.parquet
    human: [world/human.parquet]
    eval: [world/test.parquet]
    rounds: 2
    output: runs/rounds
    pretrain: {max_steps: 400, lr: 3.0e-4}
    bootstrap: {num_captions: 3, threshold: 0.6}

Flags win over the file. A bad value exits with code 2 before any work, naming the key
(`bootstrap.top_p`) and what is allowed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import typer

from capfilt.settings_cli import load_settings, settings_command
from pipelines.rounds.settings import RoundsSettings

EXIT_FAILED = 1


def load_rounds_settings(config: Path | None, flags: dict[str, Any]) -> RoundsSettings:
    """YAML (sections as sub-mappings) overlaid with flags (`section__knob`; None: not given)."""
    return load_settings(RoundsSettings, config, flags)


def write_rounds_report(settings: RoundsSettings, result: dict[str, Any]) -> Path | None:
    """The report of the last bootstrap, with the metrics across rounds."""
    from capfilt.report import ReportSettings, write_report

    from capfilt.calibration.curve import CalibrationError

    if result["last_bootstrap"] is None:
        return None
    report = functools.partial(ReportSettings, dir=Path(result["last_bootstrap"]), rounds=Path(result["rounds_file"]),
                               output=settings.output / "report.html")
    try:
        return write_report(report(labels=settings.labels))
    except CalibrationError as exc:
        if settings.labels is None:
            raise
        # e.g. labels keyed otherwise than the bootstrap's rows (--bootstrap-key-col): the page
        # without the labelled plots is still worth having
        typer.echo(f"warning: report without labels: {exc}", err=True)
        return write_report(report(labels=None))


def rounds(settings: RoundsSettings) -> int:
    """Run the loop, write the report, print the metrics table; returns the exit code."""
    from pipelines.bootstrap.input_reader import InputError
    from pipelines.bootstrap.run import BootstrapError
    from pipelines.rounds.record import metrics_table
    from pipelines.rounds.run import RoundsError, run_rounds
    from pipelines.train.data import DataError

    try:
        result = run_rounds(settings)
    except (RoundsError, BootstrapError, InputError, DataError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    if result["stopped_after"]:
        typer.echo(f"stopped after {result['stopped_after']} as asked; rerun with --resume to go on")
        return 0
    report = write_rounds_report(settings, result)
    typer.echo(metrics_table(result["rounds"]))
    typer.echo(f"rounds: {result['rounds_file']}")
    if report is not None:
        typer.echo(f"report: {report}")
    return 0


def register(app: typer.Typer) -> None:
    @settings_command(app, "rounds", RoundsSettings, help=(
        "The bootstrapping loop: round r pre-trains on human + web_r, fine-tunes the captioner and the "
        "filter on human, bootstraps the web into web_{r+1} and evaluates; every artefact kept, "
        "rounds.json, report.html. Started again with --resume on the same --output, it skips the "
        "steps that are done."))
    def rounds_cmd(settings: RoundsSettings) -> None:
        code = rounds(settings)
        if code:
            raise typer.Exit(code)
