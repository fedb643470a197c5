"""`capfilt bootstrap`: CapFilt over a web corpus, locally or on the Ray cluster in RAY_ADDRESS."""

from __future__ import annotations

import typer

from capfilt.settings_cli import settings_command
from pipelines.bootstrap.settings import BootstrapSettings

EXIT_FAILED = 1


def register(app: typer.Typer) -> None:
    @settings_command(app, "bootstrap", BootstrapSettings)
    def bootstrap(settings: BootstrapSettings) -> None:
        """Download, caption and filter a web corpus; write Parquet + WebDataset shards and a manifest."""
        # Imported here, not at the top: Ray and torch take seconds to import, and every other
        # `capfilt` command (and --help) would pay for them.
        from pipelines.bootstrap.input_reader import InputError
        from pipelines.bootstrap.run import BootstrapError, run_bootstrap

        try:
            run_bootstrap(settings)
        except (BootstrapError, InputError) as exc:
            # a refusal the user can act on (non-empty output, changed input on --resume, ...)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED)
