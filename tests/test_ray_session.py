"""pipelines/ray_session.py, the one way the jobs start or join Ray: a local instance of its own
unless RAY_ADDRESS names a cluster (never a stray one `ray start` left on the machine), and a
Ray the caller already started used as it is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from pipelines.ray_session import start_or_join_ray

ROOT = Path(__file__).resolve().parents[1]
JOIN = """
import json, ray
from pipelines.ray_session import start_or_join_ray
started = start_or_join_ray(1000)  # num_cpus passed while joining would raise
print(json.dumps({"started": started, "cpus": ray.cluster_resources()["CPU"],
                  "gcs": ray.get_runtime_context().gcs_address}))
ray.shutdown()
"""


@pytest.mark.slow
def test_local_ray_of_its_own_then_joined_through_ray_address(monkeypatch):
    import json

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    wanted = (os.cpu_count() or 1) + 3  # more than the machine has: a local instance gets what it asks
    assert start_or_join_ray(wanted) is True
    try:
        assert ray.cluster_resources()["CPU"] == wanted
        assert start_or_join_ray(1) is False  # already up: used as it is, left to its starter
        gcs = ray.get_runtime_context().gcs_address
        env = {**os.environ, "RAY_ADDRESS": gcs,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", JOIN], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        joined = json.loads(out.stdout.strip().splitlines()[-1])
        assert joined == {"started": True, "cpus": wanted, "gcs": gcs}  # that cluster, its CPUs, no new one
    finally:
        ray.shutdown()
