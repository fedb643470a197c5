"""A machine lost under a running job: a Ray cluster of a head and two worker nodes on 127.0.0.1
(ray.cluster_utils.Cluster: real raylets, each its own processes), one worker node killed without
warning once the job has committed a shard and that node has done work. The job must finish with
every row, equal to the run on the whole cluster, and its work must have run on several nodes."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from bootstrap_world import SLOW, bootstrap_settings, make_checkpoint, make_small_world, parquet_rows, same_rows
from capfilt.world.server import WorldServer
from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.run import run_bootstrap

ROWS = 48
SHARD = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recording_download(folder: Path) -> type:
    """The download stage, noting in `folder` the node each batch ran on."""

    class NodeRecordingDownload(DownloadStage):  # defined here: Ray ships it to the tasks by value
        def __call__(self, batch):
            (folder / uuid.uuid4().hex).write_text(ray.get_runtime_context().get_node_id())
            return super().__call__(batch)

    return NodeRecordingDownload


def nodes_seen(folder: Path) -> set[str]:
    return {p.read_text() for p in folder.iterdir()}


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def dead_within(node_id: str, seconds: float) -> bool:
    """Whether the GCS marks the node dead within `seconds`. A raylet killed without warning is found
    dead by missed health checks, which can take longer than the rest of the job, so the job may
    finish while the GCS still lists the killed node as alive."""
    deadline = time.monotonic() + seconds
    while node_id in alive_nodes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    temp = tempfile.mkdtemp(prefix="ray-nodes-")  # short: Ray's socket paths have a length limit
    common = dict(include_dashboard=False, temp_dir=temp, object_store_memory=200 * 2**20)
    # the head runs the driver and a little work; the actors and most tasks go to the workers
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, gcs_server_port=free_port(), **common))
    workers = [cluster.add_node(num_cpus=2, **common) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_worker_node_killed_mid_run_costs_no_row(cluster, tmp_path):
    ray_cluster, workers = cluster
    world = make_small_world(tmp_path / "world", ROWS)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    with WorldServer(world.root, port=0, slow_seconds=SLOW) as server:
        urls = world.write_urls(tmp_path / "web.parquet", server.base_url)

        def settings(out: str):
            return bootstrap_settings(urls, tmp_path / out, checkpoint, shard_size=SHARD, download_batch_size=4,
                                      batch_size=4, threshold=0.0, cpus_per_actor=1)

        whole_nodes = tmp_path / "nodes-whole"
        whole_nodes.mkdir()
        whole = run_bootstrap(settings("whole"), verbose=False, stages={"download": recording_download(whole_nodes)})

        victim = workers[1]
        faulty_nodes = tmp_path / "nodes-faulty"
        faulty_nodes.mkdir()
        done = tmp_path / "faulty" / "_work" / "done"
        killed: dict[str, int] = {}

        def kill_when_busy() -> None:
            # once the victim has run work and a shard is committed, its raylet and workers go
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                committed = len(list(done.iterdir())) if done.is_dir() else 0
                if committed and victim.node_id in nodes_seen(faulty_nodes):
                    killed["committed"] = committed
                    ray_cluster.remove_node(victim, allow_graceful=False)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        faulty = run_bootstrap(settings("faulty"), verbose=False,
                               stages={"download": recording_download(faulty_nodes)})
        killer.join(timeout=60)

    total = whole["shards"]["total"]
    assert killed and killed["committed"] < total, f"the node was not killed mid-run: {killed}, {total} shards"
    assert dead_within(victim.node_id, 120), "the killed node is still alive to the GCS"
    assert len(nodes_seen(whole_nodes)) > 1 and len(nodes_seen(faulty_nodes)) > 1, "work ran on several nodes"
    assert faulty["output_rows"] == faulty["input_rows"] == whole["output_rows"] == ROWS
    assert faulty["status"] == whole["status"]
    same_rows(parquet_rows(tmp_path / "faulty"), parquet_rows(tmp_path / "whole"))
    assert sorted(p.name for p in (tmp_path / "faulty" / "webdataset").iterdir()) == sorted(
        p.name for p in (tmp_path / "whole" / "webdataset").iterdir())
    assert not [p for p in (tmp_path / "faulty" / "_work" / "parts").rglob("*") if p.is_file()], "no part left"
