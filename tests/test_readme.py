"""The README's toy-world command blocks run as written, in an empty folder laid out as the
repository's root after `make` (a `.venv` whose bin holds `capfilt`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- toy-world: runs in tests -->"
BLOCK = re.compile(re.escape(MARK) + r"\s*```bash\n(.*?)```", re.S)
PORT = 8600  # where the world's URLs point, as the README says


def toy_world_blocks(readme: str) -> list[str]:
    return BLOCK.findall(readme)


def test_the_marked_blocks_are_found_and_every_marked_block_is_bash():
    readme = (REPO / "README.md").read_text()
    blocks = toy_world_blocks(readme)
    assert len(blocks) == readme.count(MARK) >= 3
    commands = [line for block in blocks for line in block.splitlines() if line.startswith("capfilt ")]
    assert {"capfilt bootstrap", "capfilt calibrate", "capfilt report", "capfilt rounds"} <= {
        " ".join(c.split()[:2]) for c in commands}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_readme_toy_world_blocks_run_as_written(tmp_path):
    if not _port_free(PORT):
        pytest.skip(f"port {PORT} is taken on this machine; the README's world serves there")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    script = "set -euo pipefail\n" + "\n".join(toy_world_blocks((REPO / "README.md").read_text()))
    (tmp_path / "readme.sh").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    # its own session: whatever the blocks leave running (the server, should a step fail) is
    # stopped with the session, and nothing else
    proc = subprocess.Popen(["bash", "readme.sh"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=3000)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-5000:]
    out = tmp_path / "out"
    manifest = json.loads((out / "boot" / "manifest.json").read_text())
    assert manifest["output_rows"] == manifest["input_rows"] == 300
    assert manifest["status"]["blocked_url"] == 0 and manifest["status"]["ok"] > 250
    assert "bootstrap: rows 300/300 (100.0%)" in output and "rows/s, ETA" in output
    assert re.search(r"train pretrain: steps 30/30 \(100\.0%\), [\d.]+ (steps/s|s/step), ETA 0m00s", output)
    assert (out / "pre" / "model" / "config.json").is_file() and (out / "cap" / "model").is_dir()
    assert re.search(r"threshold", output), "calibrate printed its threshold"
    assert (out / "boot" / "report.html").is_file()
    rounds = json.loads((out / "rounds" / "rounds.json").read_text())
    assert rounds and (out / "rounds" / "report.html").is_file()
    assert _port_free(PORT), "the README's last block stopped the server"
