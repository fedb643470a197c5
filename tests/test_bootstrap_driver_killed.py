"""The driver killed on a local disk (the object-storage twin is in test_bootstrap_s3.py):
`python -m pipelines.bootstrap` with its own Ray, SIGKILLed once some shards are committed, then
`--resume`: the committed shards' files are not written again (same inode, same mtime) and the
output is the uninterrupted run's, row for row."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from bootstrap_world import (SLOW, bootstrap_settings, kill_job_once_committed, make_checkpoint, make_small_world,
                             parquet_rows, same_rows)
from capfilt.world.server import WorldServer
from pipelines.bootstrap.layout import shard_files
from pipelines.bootstrap.run import run_bootstrap

ROWS = 24
SHARD = 4


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
        done = out / "_work" / "done"
        total = math.ceil(ROWS / SHARD)

        def committed_shards() -> list[int]:
            # the markers only: a marker being written is a hidden .tmp file until its rename
            return sorted(int(p.stem) for p in done.glob("*.json"))

        kill_job_once_committed(config, tmp_path / "job.log", committed=committed_shards,
                                clear_output=lambda: shutil.rmtree(out, ignore_errors=True))
        committed = committed_shards()
        assert 0 < len(committed) < total, f"{len(committed)} of {total} shards committed when killed"
        assert not (out / "manifest.json").exists()
        files = [out / rel for s in committed for rel in shard_files(s).values()]
        stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}

        resumed = run_bootstrap(killed.model_copy(update={"resume": True}), verbose=False)
    assert resumed["shards"] == {"total": total, "this_run": total - len(committed)}
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == stamps, "a committed shard was written again"
    assert resumed["output_rows"] == resumed["input_rows"] == ROWS
    same_rows(parquet_rows(out), parquet_rows(tmp_path / "whole"))
    for name in sorted(p.name for p in (tmp_path / "whole" / "webdataset").iterdir()):
        assert (out / "webdataset" / name).read_bytes() == (tmp_path / "whole" / "webdataset" / name).read_bytes()
