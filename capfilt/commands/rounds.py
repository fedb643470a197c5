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
import inspect
import typing
from pathlib import Path
from typing import Any, Callable

import typer
import yaml
from pydantic import BaseModel, ValidationError

from capfilt.settings_cli import EXIT_BAD_SETTINGS, SettingsError, _allowed_range, _cli_type, _flag
from pipelines.rounds.settings import SECTIONS, RoundsSettings

EXIT_FAILED = 1
SEP = "__"  # parameter name of a section's knob: pretrain__max_steps


def format_error(err: ValidationError) -> str:
    """One line for the first error, its key dotted as in YAML (`pretrain.lr`)."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc") or ()]
    where = ".".join(loc) or "settings"
    kind, value, msg = first.get("type", ""), first.get("input"), first.get("msg", "invalid")
    model: type[BaseModel] = RoundsSettings
    if len(loc) > 1 and loc[0] in SECTIONS:
        model = SECTIONS[loc[0]]
    known = model.model_fields
    if kind == "extra_forbidden":
        return f"unknown setting '{where}'; known {'in ' + loc[0] + ': ' if model is not RoundsSettings else ''}" \
               f"{', '.join(sorted(known))}"
    if kind == "missing":
        return f"{where}: required ({_flag(loc[-1])})"
    field = known.get(loc[-1]) if loc else None
    allowed = _allowed_range(field) if field is not None else None
    if not loc:  # a cross-field check: its message names the keys
        return msg.removeprefix("Value error, ")
    if allowed is not None:
        return f"{where}: {value!r} is not allowed; allowed range {allowed} ({msg})"
    return f"{where}: {value!r} is not allowed: {msg}"


def _keys(mapping: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def load_rounds_settings(config: Path | None, flags: dict[str, Any]) -> RoundsSettings:
    """YAML (sections as sub-mappings) overlaid with flags (None: not given), validated."""
    values: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise SettingsError(f"config: file not found: {config}")
        try:
            loaded = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"config: {config} is not valid YAML: {exc}".replace("\n", " "))
        if not isinstance(loaded, dict):
            raise SettingsError(f"config: {config} must hold a mapping of settings")
        values = _keys(loaded)
        for name in SECTIONS:
            if isinstance(values.get(name), dict):
                values[name] = _keys(values[name])
    for key, value in flags.items():
        if value is None:
            continue
        if SEP in key:
            section, knob = key.split(SEP, 1)
            current = values.get(section)
            values[section] = {**(current if isinstance(current, dict) else {}), knob: value}
        else:
            values[key] = value
    try:
        return RoundsSettings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(format_error(exc)) from None


def _bool_decl(extra: dict[str, Any], prefix: str, name: str) -> str:
    if extra.get("flag"):
        on, off = extra["flag"].split("/")
        return f"--{prefix}{on[2:]}/--{prefix}{off[2:]}"
    flag = name.replace("_", "-")
    return f"--{prefix}{flag}/--{prefix}no-{flag}"


def _parameters() -> list[inspect.Parameter]:
    params = []

    def add(name: str, field: Any, prefix: str) -> None:
        cli_type = _cli_type(field.annotation)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        short = name.split(SEP)[-1]
        decl = _bool_decl(extra, prefix, short) if cli_type is bool else f"--{prefix}{short.replace('_', '-')}"
        default = None if field.is_required() else repr(field.get_default(call_default_factory=True))
        info = typer.Option(None, decl, help=field.description, show_default=default if default is not None else False,
                            rich_help_panel=prefix[:-1] + " knobs" if prefix else None)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=typing.Optional[cli_type]))

    for name, field in RoundsSettings.model_fields.items():
        if name not in SECTIONS:
            add(name, field, "")
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            add(f"{section}{SEP}{name}", field, f"{section}-")
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],
                                    default=typer.Option(None, "--config", help="YAML file: the flags' keys, each "
                                                         "job's knobs in its own sub-mapping.")))
    return params


def rounds_command(fn: Callable[[RoundsSettings], Any]) -> Callable[..., Any]:
    """`fn(settings)` as a typer command with one flag per setting (sections' knobs prefixed)."""
    params = _parameters()

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        config = kwargs.pop("config")
        flags = {k: (None if v == [] else v) for k, v in kwargs.items()}
        try:
            settings = load_rounds_settings(config, flags)
        except SettingsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_SETTINGS)
        return fn(settings)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__
    return command


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
    app.command("rounds", help="The bootstrapping loop: round r pre-trains on human + web_r, fine-tunes the "
                               "captioner and the filter on human, bootstraps the web into web_{r+1} and "
                               "evaluates; every artefact kept, rounds.json, report.html. Started again with "
                               "--resume on the same --output, it skips the steps that are done.")(
        rounds_command(rounds))

