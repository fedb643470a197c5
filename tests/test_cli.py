"""The installed `capfilt` program: its help lists every command group, and it starts without
the model libraries."""

import subprocess
import sys

import pytest

from capfilt.cli import COMMAND_MODULES


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "capfilt", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for name in COMMAND_MODULES:
        assert name in out.stdout, f"'{name}' missing from capfilt --help"


def test_the_cli_and_the_bootstrap_driver_start_without_torch_or_transformers():
    """Every command imports the CLI, and the bootstrap driver imports its run module and hashes
    and checks its checkpoints, before anything else; torch and transformers would add ~3 s of CPU
    to each on a 2-core machine (in the driver: taken from the actors starting beside it). Only
    the stage actors, which run the models, import them."""
    code = ("import sys, capfilt.cli, pipelines.bootstrap.run, model.checkpoint_files; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_training_driver_starts_ray_without_transformers(tmp_path):
    """A training job's driver checks the data, reads the starting checkpoint's image size off its
    config and names the workers' loop, and never imports the model's code: transformers' BLIP
    modules cost ~4 s of CPU on a 2-core machine before Ray had started. (torch it does import,
    for Ray's TorchTrainer.)"""
    from model.checkpoint import save_checkpoint
    from model.med import MED
    from model_helpers import small_config, tiny_tokenizer

    tok = tiny_tokenizer()
    path = save_checkpoint(tmp_path / "init", MED(small_config(tok)), tok)
    code = ("import sys, pipelines.train.job as job; "
            f"print(job.image_size_of({str(path)!r}), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(small_config(tok).image_size), "False"]


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_each_command_module_registers(name):
    import importlib

    module = importlib.import_module(f"capfilt.commands.{name}")
    assert callable(module.register)


def test_a_listed_command_without_its_module_is_an_error():
    import typer

    from capfilt.cli import _register_all

    with pytest.raises(ModuleNotFoundError, match=r"'no_such_command'.*capfilt\.commands\.no_such_command"):
        _register_all(["no_such_command"], typer.Typer())
