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


def _register_all(names: Sequence[str] = COMMAND_MODULES, target: typer.Typer = app) -> None:
    for name in names:
        module_name = f"capfilt.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                # an error, not a skip: a renamed file must not make a sub-command vanish quietly
                raise ModuleNotFoundError(
                    f"capfilt command {name!r} is listed in COMMAND_MODULES, but its module "
                    f"{module_name} does not exist", name=module_name) from exc
            raise
        module.register(target)


_register_all()


def main(argv: Sequence[str] | None = None) -> int:
    code = run_app(app, argv)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
