"""What the bootstrap tests and the benchmark share: a small toy world, served on loopback, and
a tiny random checkpoint (one MED serves as captioner and as filter); and what the tests of a
run that is interrupted share: the job killed once it has committed a shard, and its output
compared with the uninterrupted run's, row for row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from capfilt.cli import main as capfilt_main
from capfilt.world.make import make_world
from capfilt.world.settings import WorldMakeSettings
from capfilt.world.store import World
from pipelines.bootstrap.settings import BootstrapSettings

REPO = Path(__file__).resolve().parents[1]

# The server's slow URLs answer after SLOW seconds; the pipeline gives up after TIMEOUT.
SLOW = 10.0
TIMEOUT = 3.0
# The world's fetch labels, as the statuses the pipeline must give them.
EXPECTED_STATUS = {"ok": "ok", "not_found": "download_error", "truncated": "decode_error",
                   "not_image": "decode_error", "slow": "download_error"}


def make_small_world(out: Path, size: int, broken_share: float = 0.1) -> World:
    make_world(WorldMakeSettings(out=out, size=size, human_size=0, val_size=0, test_size=0, nlvr2_pairs=0,
                                 clips=0, vqa_per_image=0, broken_share=broken_share, workers=1))
    return World.load(out)


def make_checkpoint(out: Path) -> Path:
    assert capfilt_main(["model", "init", "--preset", "tiny", "--output", str(out)]) == 0
    return out


def bootstrap_settings(input_path: Path | str, output: Path, checkpoint: Path, **changes: Any) -> BootstrapSettings:
    """Settings for a small run on 2 cores: loopback allowed, small images and batches."""
    values: dict[str, Any] = dict(
        input=str(input_path), output=output, captioner=checkpoint, filter=checkpoint, key_col="key",
        allow_private_hosts=True, timeout=TIMEOUT, retries=1, image_size=64, shard_size=16, batch_size=8,
        download_threads=4, download_batch_size=16, max_length=12, min_length=3,
    )
    values.update(changes)
    return BootstrapSettings(**values)


def processes_mentioning(text: str) -> list[int]:
    """Pids (other than this one) whose command line contains `text`: how a test finds the Ray
    processes it started (each carries its temp dir on its command line) without touching any
    other Ray instance on the machine."""
    import os

    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_processes_mentioning(text: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process whose command line contains `text`; fails if any is
    left."""
    import os
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in processes_mentioning(text):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while processes_mentioning(text) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = processes_mentioning(text)
    assert not left, f"processes still running: {left}"


def kill_job_once_committed(config: Path, log: Path, *, committed: Callable[[], Any],
                            clear_output: Callable[[], None]) -> None:
    """`python -m pipelines.bootstrap --config CONFIG`, as a user runs it, with a Ray of its own (a
    fresh temp dir, no RAY_ADDRESS: it never joins another instance), SIGKILLed with its whole
    process group as soon as `committed()` is truthy (or after 900 s: a machine busy with other work
    took over 300 s to commit a first shard). Asserts that it was the kill
    that ended the job; every Ray process it started is stopped. Its output goes to `log`."""
    ray_tmp = tempfile.mkdtemp(prefix="ray-killed-")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    try:
        # Ray gives its node 30 s to start; a machine busy with other work can miss that, and
        # the job then fails before it plans anything: one more try, on a clean output
        for _ in range(2):
            clear_output()
            with open(log, "wb") as log_file:
                job = subprocess.Popen([sys.executable, "-m", "pipelines.bootstrap", "--config", str(config)],
                                       cwd=REPO, env=env, start_new_session=True, stdout=log_file,
                                       stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 900
            while job.poll() is None and time.monotonic() < deadline and not committed():
                time.sleep(0.05)
            if job.poll() is not None and "timed out during startup" in log.read_text(errors="replace"):
                stop_processes_mentioning(ray_tmp)
                continue
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
            break
    finally:
        stop_processes_mentioning(ray_tmp)  # the Ray instance the job started
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == -signal.SIGKILL, f"the job ended before it was killed: {log.read_text()[-2000:]}"


def parquet_rows(out: Path) -> list[dict]:
    """The rows of a run's output on local disk, in key order."""
    return pq.read_table(Path(out) / "parquet").sort_by("key").to_pylist()


def same_rows(got: list[dict], want: list[dict]) -> None:
    """Row for row the same output; ITM/ITC scores to float precision (another batch puts rows
    in other matmuls, and a matmul's last bits depend on the batch)."""
    import pytest  # here: the benchmark that imports this module runs without pytest

    assert [r["key"] for r in got] == [r["key"] for r in want]
    for g, w in zip(got, want):
        for column, value in w.items():
            if column.endswith(("_itm", "_itc")) and value is not None:
                assert g[column] == pytest.approx(value, abs=1e-5), (w["key"], column)
            else:
                assert g[column] == value, (w["key"], column)
