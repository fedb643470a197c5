"""The driver killed on a local disk (the object-storage twin is in test_bootstrap_s3.py):
`python -m pipelines.bootstrap` with its own Ray, SIGKILLed once some shards are committed, then
`--resume`: the committed shards' files are not written again (same inode, same mtime) and the
output is the uninterrupted run's, row for row."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bootstrap_world import SLOW, bootstrap_settings, make_checkpoint, make_small_world, stop_processes_mentioning
from capfilt.world.server import WorldServer
from pipelines.bootstrap.layout import shard_files
from pipelines.bootstrap.run import run_bootstrap

ROWS = 24
SHARD = 4
REPO = Path(__file__).resolve().parents[1]


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(out / "parquet").sort_by("key").to_pylist()


@pytest.mark.slow
def test_driver_killed_then_resume_on_local_disk(tmp_path):
    world = make_small_world(tmp_path / "world", ROWS)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    with WorldServer(world.root, port=0, slow_seconds=SLOW) as server:
        urls = world.write_urls(tmp_path / "web.parquet", server.base_url)
        settings = bootstrap_settings(urls, tmp_path / "whole", checkpoint, shard_size=SHARD, batch_size=4,
                                      download_batch_size=4)
        run_bootstrap(settings, verbose=False)

        out = tmp_path / "killed"
        killed = settings.model_copy(update={"output": str(out)})
        config = tmp_path / "job.yaml"
        config.write_text(json.dumps(killed.model_dump(mode="json")))  # JSON is YAML
        ray_tmp = tempfile.mkdtemp(prefix="ray-driver-")  # short: Ray's socket paths have a length limit
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        done = out / "_work" / "done"
        total = math.ceil(ROWS / SHARD)
        log = tmp_path / "job.log"
        try:
            # Ray gives its node 30 s to start; a busy machine can miss that: one more try
            for _ in range(2):
                shutil.rmtree(out, ignore_errors=True)
                with open(log, "wb") as log_file:
                    job = subprocess.Popen([sys.executable, "-m", "pipelines.bootstrap", "--config", str(config)],
                                           cwd=REPO, env=env, start_new_session=True, stdout=log_file,
                                           stderr=subprocess.STDOUT)
                deadline = time.monotonic() + 300
                while job.poll() is None and time.monotonic() < deadline and not (done.is_dir() and any(done.iterdir())):
                    time.sleep(0.05)
                if job.poll() is not None and "timed out during startup" in log.read_text(errors="replace"):
                    stop_processes_mentioning(ray_tmp)
                    continue
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=30)
                break
        finally:
            stop_processes_mentioning(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
        assert job.returncode == -signal.SIGKILL, f"the job ended before it was killed: {log.read_text()[-2000:]}"
        committed = sorted(int(p.stem) for p in done.glob("*.json"))
        assert 0 < len(committed) < total, f"{len(committed)} of {total} shards committed when killed"
        assert not (out / "manifest.json").exists()
        files = [out / rel for s in committed for rel in shard_files(s).values()]
        stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

        resumed = run_bootstrap(killed.model_copy(update={"resume": True}), verbose=False)
    assert resumed["shards"] == {"total": total, "this_run": total - len(committed)}
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == stamps, "a committed shard was written again"
    assert resumed["output_rows"] == resumed["input_rows"] == ROWS
    got, want = rows_of(out), rows_of(tmp_path / "whole")
    assert [r["key"] for r in got] == [r["key"] for r in want]
    for g, w in zip(got, want):
        for column, value in w.items():
            if column.endswith(("_itm", "_itc")) and value is not None:  # another batch, other matmuls
                assert g[column] == pytest.approx(value, abs=1e-5), (w["key"], column)
            else:
                assert g[column] == value, (w["key"], column)
    for name in sorted(p.name for p in (tmp_path / "whole" / "webdataset").iterdir()):
        assert (out / "webdataset" / name).read_bytes() == (tmp_path / "whole" / "webdataset" / name).read_bytes()
