"""The `capfilt` command: one sub-command group per concern, each in capfilt/commands/."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

import typer

from capfilt.settings_cli import run_app

app = typer.Typer(
    name="capfilt",
    help="Bootstrap image-text datasets with BLIP's CapFilt: caption, filter, train, repeat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes `register(app)`; the list keeps the order of `capfilt --help`.
COMMAND_MODULES = ["world", "model", "bootstrap", "train", "calibrate", "report", "rounds"]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"capfilt.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"capfilt.commands.{name}":
                continue  # a command group not built yet
            raise
        module.register(app)


_register_all()


def main(argv: Sequence[str] | None = None) -> int:
    code = run_app(app, argv)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
