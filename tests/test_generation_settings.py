"""Generation knobs are declared once (model/generation_settings.py): the bootstrap's, the
evaluation's and the rounds' flags take their bounds from there, so a value generation would
refuse is refused at the command line, with the same bound, before any work starts."""

import pytest

from capfilt.cli import main
from model.generation_settings import EVALUATION, GenerationSettings
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.rounds.settings import EvaluateKnobs
from pipelines.train.settings import EvaluateSettings

SHARED = ("top_k", "top_p", "min_length", "max_length", "num_beams", "prompt")


@pytest.mark.parametrize("model", [BootstrapSettings, EvaluateSettings, EvaluateKnobs])
def test_every_generation_knob_has_generation_s_bounds(model):
    for name in SHARED:
        assert model.model_fields[name].metadata == GenerationSettings.model_fields[name].metadata, name


def test_evaluation_defaults_are_blip_s_evaluation():
    s = EvaluateSettings.model_fields
    assert (s["max_length"].default, s["min_length"].default, s["num_beams"].default) == (
        EVALUATION.max_length, EVALUATION.min_length, EVALUATION.num_beams) == (20, 5, 3)
    assert BootstrapSettings.model_fields["max_length"].default == GenerationSettings().max_length == 30


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_max_length_1_is_refused_at_the_cli_with_generation_s_bound(tmp_path, capsys):
    lowest = next(m.ge for m in GenerationSettings.model_fields["max_length"].metadata if hasattr(m, "ge"))
    with pytest.raises(ValueError):
        GenerationSettings(max_length=lowest - 1)
    loop = ["rounds", "--web", "w.parquet", "--human", "h.parquet", "--eval", "e.parquet", "--output", str(tmp_path / "r")]
    commands = {
        "rounds": [*loop, "--evaluate-max-length", str(lowest - 1)],
        "evaluate": ["evaluate", "--checkpoint", str(tmp_path), "--data", "x.parquet", "--max-length", str(lowest - 1)],
        "bootstrap": ["bootstrap", "--input", "w.parquet", "--output", str(tmp_path / "b"), "--download-only",
                      "--max-length", str(lowest - 1)],
    }
    for name, argv in commands.items():
        code, err = _run(argv, capsys)
        assert code == 2, name
        assert "max_length" in err and f"[{lowest}, 512]" in err, (name, err)
    # the cross-field check, too, is generation's, run at the entry point
    code, err = _run([*loop, "--evaluate-min-length", "30"], capsys)
    assert code == 2 and "min_length (30) exceeds max_length (20)" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()
