"""Turn a pydantic settings model into a typer command whose flags are its fields.

Every command takes `--config FILE.yaml`; its keys are the same names as the flags (dashes or
underscores). Flags given on the command line win over the file. Validation happens once, here,
before any work starts; a bad value exits with code 2 and one line naming the key and what is
allowed.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import annotated_types
import typer
import yaml
from pydantic import BaseModel, ValidationError

S = TypeVar("S", bound=BaseModel)

EXIT_BAD_SETTINGS = 2


class SettingsError(Exception):
    """A settings value that cannot be accepted; `str()` is the one line shown to the user."""


def _allowed_range(field: Any) -> str | None:
    """'(0, 1]'-style interval from a field's Gt/Ge/Lt/Le metadata, or None."""
    lo = hi = None
    lo_open = hi_open = False
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Gt):
            lo, lo_open = meta.gt, True
        elif isinstance(meta, annotated_types.Ge):
            lo, lo_open = meta.ge, False
        elif isinstance(meta, annotated_types.Lt):
            hi, hi_open = meta.lt, True
        elif isinstance(meta, annotated_types.Le):
            hi, hi_open = meta.le, False
    if lo is None and hi is None:
        return None
    left = ("(" if lo_open else "[") + ("-inf" if lo is None else str(lo))
    right = ("inf" if hi is None else str(hi)) + (")" if hi_open else "]")
    if hi is None:
        right = "inf)"
    if lo is None:
        left = "(-inf"
    return f"{left}, {right}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


SECTION_SEP = "__"  # parameter name of a section's knob: pretrain__max_steps


def section_model(field: Any) -> type[BaseModel] | None:
    """The settings model of a field that is a section of knobs (a nested model), else None."""
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def format_validation_error(cls: type[BaseModel], err: ValidationError) -> str:
    """One line per the first error: the key as the user wrote it (dotted inside a section, as
    in YAML: `pretrain.lr`), the value, what is allowed."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc") or ()]
    msg = str(first.get("msg", "invalid"))
    model: type[BaseModel] = cls
    for part in loc[:-1]:  # descend into sections
        inner = model.model_fields.get(part)
        if inner is None or section_model(inner) is None:
            break
        model = section_model(inner)
    if not loc or (model is not cls and loc[-1] not in model.model_fields and first.get("type") != "extra_forbidden"):
        # a check across several settings (a model validator): its message names them
        return msg.removeprefix("Value error, ").replace("\n", " ")
    where = ".".join(loc)
    kind = first.get("type", "")
    value = first.get("input")
    field = model.model_fields.get(loc[-1])
    if field is not None and section_model(field) is not None and kind.startswith("value_error"):
        # a check across a section's knobs: its message names them
        return f"{where}: " + msg.removeprefix("Value error, ").replace("\n", " ")
    if kind == "extra_forbidden":
        scope = f" in {'.'.join(loc[:-1])}" if model is not cls else ""
        return f"unknown setting '{where}'; known settings{scope}: {', '.join(sorted(model.model_fields))}"
    if kind == "missing":
        return f"{where}: required ({_flag(loc[-1])})"
    allowed = _allowed_range(field) if field is not None else None
    if allowed is not None:
        return f"{where}: {value!r} is not allowed; allowed range {allowed} ({msg})"
    return f"{where}: {value!r} is not allowed: {msg}"


def _keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def read_config(config: Path) -> dict[str, Any]:
    """A YAML settings file as a mapping, keys with dashes or underscores alike."""
    if not config.is_file():
        raise SettingsError(f"config: file not found: {config}")
    try:
        loaded = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config: {config} is not valid YAML: {exc}".replace("\n", " "))
    if not isinstance(loaded, dict):
        raise SettingsError(f"config: {config} must hold a mapping of settings, not {type(loaded).__name__}")
    return _keys(loaded)


def load_settings(cls: type[S], config: Path | None, overrides: dict[str, Any]) -> S:
    """YAML file (if any) overlaid with `overrides` (None values ignored), validated as `cls`.

    A field that is a section of knobs (a nested model) is a sub-mapping in YAML, and its knobs'
    overrides are named `section__knob`."""
    values: dict[str, Any] = read_config(config) if config is not None else {}
    for name, field in cls.model_fields.items():
        if section_model(field) is not None and isinstance(values.get(name), dict):
            values[name] = _keys(values[name])
    for key, value in overrides.items():
        if value is None:
            continue
        if SECTION_SEP in key:
            section, knob = key.split(SECTION_SEP, 1)
            current = values.get(section)
            values[section] = {**(current if isinstance(current, dict) else {}), knob: value}
        else:
            values[key] = value
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(cls, exc)) from None


def _cli_type(annotation: Any) -> Any:
    """The type typer reads a flag as: text (or a list of text), except booleans, which are
    switches. Pydantic converts and checks every value afterwards, so a bad value on the
    command line gets the same one-line message as the same bad value in YAML."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _cli_type(args[0])
    if origin is typing.Annotated:
        return _cli_type(args[0])
    if annotation is bool:
        return bool
    if origin in (list, tuple) or annotation in (list, tuple):
        return list[str]
    return str


def _metavar(annotation: Any) -> str:
    """What a flag takes, for --help: INT, FLOAT, PATH, TEXT, or the choices of a Literal."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _metavar(args[0])
    if origin is typing.Annotated:
        return _metavar(args[0])
    if origin is typing.Literal:
        return "[" + "|".join(str(a) for a in typing.get_args(annotation)) + "]"
    if origin in (list, tuple):
        return (_metavar(args[0]) if args else "TEXT") + " ..."
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return "PATH"
        names = {int: "INT", float: "FLOAT", str: "TEXT"}
        if annotation in names:
            return names[annotation]
    return "TEXT"


def _default_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _parameter(name: str, field: Any, *, positional: bool = False, prefix: str = "",
               panel: str | None = None) -> inspect.Parameter:
    """The typer parameter of one setting; a section's knobs carry the section as prefix."""
    cli_type = _cli_type(field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    default_text = None if field.is_required() else _default_text(field.get_default(call_default_factory=True))
    short = name.split(SECTION_SEP)[-1].replace("_", "-")
    if positional:
        info = typer.Argument(None, help=field.description, show_default=False)
    else:
        if cli_type is bool:
            on, off = extra["flag"].split("/") if extra.get("flag") else (f"--{short}", f"--no-{short}")
            decl = f"--{prefix}{on[2:]}/--{prefix}{off[2:]}"
        else:
            decl = f"--{prefix}{short}" if prefix or not extra.get("flag") else extra["flag"]
        info = typer.Option(
            None, decl, help=field.description, metavar=None if cli_type is bool else _metavar(field.annotation),
            show_default=default_text if default_text is not None else False, rich_help_panel=panel,
        )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=typing.Optional[cli_type])


def settings_command(
    app: typer.Typer,
    name: str,
    cls: type[S],
    *,
    positional: Sequence[str] = (),
    help: str | None = None,
) -> Callable[[Callable[[S], Any]], Callable[[S], Any]]:
    """Register `fn(settings)` as command `name`; one flag per field of `cls`.

    Fields named in `positional` become arguments. A field's `json_schema_extra={"flag": ...}`
    overrides its flag declaration (e.g. "--filter-web/--keep-all-web" for a bool).
    """

    def decorator(fn: Callable[[S], Any]) -> Callable[[S], Any]:
        params = []
        for field_name, field in cls.model_fields.items():
            section = section_model(field)
            if section is None:
                params.append(_parameter(field_name, field, positional=field_name in positional))
                continue
            for knob, knob_field in section.model_fields.items():
                params.append(_parameter(f"{field_name}{SECTION_SEP}{knob}", knob_field, prefix=f"{field_name}-",
                                         panel=f"{field_name} knobs"))
        params.append(
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, "--config", help="YAML file whose keys are this command's flags."),
                annotation=typing.Optional[Path],
            )
        )

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            config = kwargs.pop("config")
            overrides = {k: (None if v == [] else v) for k, v in kwargs.items()}
            try:
                settings = load_settings(cls, config, overrides)
            except SettingsError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(EXIT_BAD_SETTINGS)
            return fn(settings)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read our signature, not fn's
        app.command(name, help=help or fn.__doc__)(command)
        return fn

    return decorator


def run_app(app: typer.Typer, argv: Sequence[str] | None = None) -> int:
    """Run a typer app as a program would, returning its exit code (for tests and `main`)."""
    try:
        result = app(args=list(argv) if argv is not None else sys.argv[1:], standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click exits this way on --help
        return int(exc.code or 0)
    except Exception as exc:
        # Usage errors (an unknown flag, a missing argument) come from click, or from the copy
        # of click that newer typer releases carry; recognise both by what they are.
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "UsageError" in kinds and getattr(exc, "ctx", None) is not None and exc.ctx.command.params:
            typer.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
            return exc.exit_code
        if "ClickException" in kinds:
            exc.show()
            return exc.exit_code
        raise
    # click hands back the code of an Exit raised inside a command when not standalone
    return result if isinstance(result, int) else 0
