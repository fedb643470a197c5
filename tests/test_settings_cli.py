"""The settings mechanism every command uses: YAML + flags, flags win, bad values exit 2."""

from pathlib import Path
from typing import Literal

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator

from capfilt.settings_cli import EXIT_BAD_SETTINGS, run_app, settings_command


class DemoSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    out: Path
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus mass")
    num_captions: int = Field(1, ge=0)
    decoding: Literal["nucleus", "beam"] = "nucleus"
    filter_web: bool = Field(True, json_schema_extra={"flag": "--filter-web/--keep-all-web"})
    labels: FilePath | None = None

    @model_validator(mode="after")
    def _beam_needs_captions(self):
        if self.decoding == "beam" and self.num_captions == 0:
            raise ValueError("decoding 'beam' needs num_captions >= 1")
        return self


@pytest.fixture
def app_and_seen():
    app = typer.Typer()
    seen: list[DemoSettings] = []

    @settings_command(app, "go", DemoSettings, positional=["out"])
    def go(settings: DemoSettings) -> None:
        seen.append(settings)

    @app.callback()
    def _root() -> None:  # keeps "go" a sub-command
        pass

    return app, seen


def test_flags_parse_into_settings(app_and_seen, tmp_path):
    app, seen = app_and_seen
    assert run_app(app, ["go", str(tmp_path), "--top-p", "0.5", "--keep-all-web", "--decoding", "beam"]) == 0
    assert seen[0].top_p == 0.5 and seen[0].filter_web is False and seen[0].decoding == "beam"
    assert seen[0].out == tmp_path and seen[0].num_captions == 1


def test_yaml_keys_are_flags_and_flags_win(app_and_seen, tmp_path):
    app, seen = app_and_seen
    cfg = tmp_path / "c.yaml"
    cfg.write_text("top-p: 0.3\nnum_captions: 4\n")
    assert run_app(app, ["go", str(tmp_path), "--config", str(cfg), "--num-captions", "2"]) == 0
    assert seen[0].top_p == 0.3 and seen[0].num_captions == 2


@pytest.mark.parametrize(
    "args, yaml_text, needle",
    [
        (["--top-p", "1.5"], None, "top_p"),
        (["--top-p", "0"], None, "(0, 1]"),
        (["--num-captions", "-1"], None, "[0, inf)"),
        (["--decoding", "greedy"], None, "decoding"),
        (["--num-captions", "three"], None, "num_captions: 'three'"),
        (["--labels", "/nonexistent/labels.json"], None, "labels"),
        ([], "top_p: 2\n", "(0, 1]"),
        ([], "num_captions: many\n", "num_captions"),
        ([], "topp: 0.5\n", "unknown setting 'topp'"),
        (["--decoding", "beam", "--num-captions", "0"], None, "decoding 'beam' needs num_captions >= 1"),
    ],
)
def test_bad_values_exit_2_with_one_line(app_and_seen, tmp_path, capsys, args, yaml_text, needle):
    app, seen = app_and_seen
    argv = ["go", str(tmp_path), *args]
    if yaml_text is not None:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml_text)
        argv += ["--config", str(cfg)]
    assert run_app(app, argv) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert not seen, "no work may start on bad settings"


def test_missing_config_file_exits_2(app_and_seen, tmp_path, capsys):
    app, seen = app_and_seen
    assert run_app(app, ["go", str(tmp_path), "--config", str(tmp_path / "nope.yaml")]) == EXIT_BAD_SETTINGS
    assert "nope.yaml" in capsys.readouterr().err


def test_unknown_flag_exits_2_with_one_line(app_and_seen, tmp_path, capsys):
    app, seen = app_and_seen
    assert run_app(app, ["go", str(tmp_path), "--nope", "1"]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nope" in err
    assert not seen
