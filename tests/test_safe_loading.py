"""Nothing capfilt reads can run code: checkpoints and training state are read with
`torch.load(weights_only=True)` (or safetensors), and no source file unpickles, evaluates or
hands a string to a shell. A pickle that would create a file when loaded is refused, and the file
is never created."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from model.weights_io import CheckpointError, read_torch_file
from pipelines.train.state import load_rng

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["capfilt", "pipelines", "model", "benchmarks", "deploy"]


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if the pickle is executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_torch_file(tmp_path / "evil.pth")
    assert not marker.exists()


def test_training_state_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"torch": torch.get_rng_state(), "hook": Payload(marker)}, tmp_path / "rng_rank0.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_rng(tmp_path, 0, {})
    assert not marker.exists()


UNSAFE = {
    "pickle load": re.compile(r"\b(c?pickle|dill|joblib|cloudpickle)\.loads?\("),
    "pandas read_pickle": re.compile(r"read_pickle\("),
    "yaml.load without a safe loader": re.compile(r"\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)"),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "os.system / os.popen": re.compile(r"\bos\.(system|popen)\("),
    "eval / exec of a string": re.compile(r"(?<![.\w])(?<!def )(eval|exec)\("),
    "trust_remote_code": re.compile(r"trust_remote_code\s*=\s*True"),
}


def _torch_loads_without_weights_only(text: str) -> list[str]:
    bad = []
    for match in re.finditer(r"torch\.load\(", text):
        depth, end = 1, match.end()
        while depth and end < len(text):  # the call's text, to its closing parenthesis
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        call = text[match.start():end]
        if not re.search(r"weights_only\s*=\s*True", call):
            bad.append(call)
    return bad


def test_no_source_file_unpickles_evaluates_or_shells_out():
    files = [p for folder in SOURCES for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 50, "the scan found the sources"
    found = []
    for path in files:
        text = path.read_text()
        found += [f"{path.relative_to(REPO)}: {call}" for call in _torch_loads_without_weights_only(text)]
        found += [f"{path.relative_to(REPO)}: {name}" for name, pattern in UNSAFE.items() if pattern.search(text)]
    assert found == []


def test_the_scan_sees_what_it_looks_for():
    assert _torch_loads_without_weights_only("x = torch.load(\n  path, map_location=f(1))\n") != []
    assert _torch_loads_without_weights_only("torch.load(path, weights_only=True)") == []
    for sample in ["pickle.loads(b)", "yaml.load(f)", "subprocess.run(c, shell=True)", "eval(s)", "os.system(c)"]:
        assert any(p.search(sample) for p in UNSAFE.values()), sample
    assert not any(p.search(s) for p in UNSAFE.values() for s in ["model.eval()", "def eval(self):", "yaml.safe_load(f)"])
