"""A disk that fills part-way: `capfilt bootstrap` writes its output to a real tmpfs about half the
size the output needs (mounted in a mount namespace of its own, so nothing of the machine's
mounts changes). The job must stop with a clear error; every shard it marked committed must be
whole; nothing without a marker may look committed; and `--resume` on a disk with room must end
with the uninterrupted run's rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bootstrap_world import SLOW, bootstrap_settings, make_small_world, stop_processes_mentioning
from capfilt.world.server import WorldServer
from pipelines.bootstrap.layout import shard_files
from pipelines.bootstrap.run import run_bootstrap

REPO = Path(__file__).resolve().parents[1]
ROWS = 64


def unshare_prefix() -> list[str] | None:
    """How to run a command in a mount namespace where it may mount a tmpfs, or None."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*prefix, "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True)
    return prefix if probe.returncode == 0 else None


def disk_bytes(folder: Path) -> int:
    """What `folder` takes on a disk of 4 KiB blocks (what a tmpfs counts)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 + 4096 for p in folder.rglob("*"))


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(out / "parquet").sort_by("key").to_pylist()


@pytest.mark.slow
def test_a_disk_that_fills_part_way_stops_the_job_cleanly_and_resume_finishes_it(tmp_path):
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a mount namespace here (unshare/user namespaces unavailable)")
    world = make_small_world(tmp_path / "world", ROWS)
    with WorldServer(world.root, port=0, slow_seconds=SLOW) as server:
        urls = world.write_urls(tmp_path / "web.parquet", server.base_url)
        settings = bootstrap_settings(urls, tmp_path / "whole", None, captioner=None, filter=None,
                                      download_only=True, shard_size=8, image_size=128)
        whole = run_bootstrap(settings, verbose=False)
        size = disk_bytes(tmp_path / "whole") // 2

        disk, stash = tmp_path / "disk", tmp_path / "stash"
        disk.mkdir()
        stash.mkdir()
        config = tmp_path / "job.json"
        config.write_text(json.dumps(settings.model_copy(update={"output": str(disk / "out")}).model_dump(mode="json")))
        ray_tmp = tempfile.mkdtemp(prefix="ray-full-")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        # the job, on the small disk; what it left is copied out before the namespace (and its mount) ends
        script = (f'mount -t tmpfs -o size={size} tmpfs "{disk}" || exit 99; '
                  f'"{sys.executable}" -m capfilt bootstrap --config "{config}" > "{stash}/job.log" 2>&1; '
                  f'echo $? > "{stash}/rc"; df -B1 "{disk}" | tail -1 > "{stash}/df"; '
                  f'cp -a "{disk}/out" "{stash}/out"; umount "{disk}"')
        try:
            subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, env=env, timeout=600, check=False)
        finally:
            stop_processes_mentioning(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)

        log = (stash / "job.log").read_text(errors="replace")
        assert (stash / "rc").read_text().strip() == "1", log[-3000:]
        assert "No space left on device" in log and "Traceback" not in log, log[-3000:]
        last_line = [line for line in log.splitlines() if line.strip()][-1]
        assert last_line.startswith("error: shards not written (run again with --resume)"), last_line
        assert "OSError: [Errno 28] No space left on device" in last_line and "ray::" not in last_line, last_line
        used, available = (stash / "df").read_text().split()[2:4]
        print(f"tmpfs of {size} bytes; {used} used, {available} left when the job stopped")

        out = stash / "out"
        done = sorted(int(p.stem) for p in (out / "_work" / "done").glob("*.json")) \
            if (out / "_work" / "done").is_dir() else []
        total = whole["shards"]["total"]
        assert len(done) < total, "the disk filled before the job ended"
        for shard in done:  # a marker means its files are whole
            files = {kind: out / rel for kind, rel in shard_files(shard).items()}
            assert pq.read_table(files["parquet"]).num_rows > 0
            with tarfile.open(files["webdataset"]) as tar:
                tar.getmembers()
            json.loads(files["stats"].read_text())
        assert not (out / "manifest.json").exists(), "no manifest for a run that did not finish"

        # on a disk with room, --resume keeps the committed shards and does the rest
        resumed_out = tmp_path / "resumed"
        shutil.copytree(out, resumed_out)
        kept = {s: (resumed_out / shard_files(s)["parquet"]).stat().st_mtime_ns for s in done}
        resumed = run_bootstrap(settings.model_copy(update={"output": str(resumed_out), "resume": True}),
                                verbose=False)
    assert resumed["shards"] == {"total": total, "this_run": total - len(done)}
    assert {s: (resumed_out / shard_files(s)["parquet"]).stat().st_mtime_ns for s in done} == kept
    assert resumed["output_rows"] == ROWS and rows_of(resumed_out) == rows_of(tmp_path / "whole")
