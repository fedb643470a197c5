"""What the bootstrap tests and the benchmark share: a small toy world, served on loopback, and
a tiny random checkpoint (one MED serves as captioner and as filter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capfilt.cli import main as capfilt_main
from capfilt.world.make import make_world
from capfilt.world.settings import WorldMakeSettings
from capfilt.world.store import World
from pipelines.bootstrap.settings import BootstrapSettings

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
