"""End to end: a Ray head started with `ray start`, the job sent with `ray job submit`, as on a
cluster; the output checked, the head stopped."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bootstrap_world import SLOW, TIMEOUT, make_checkpoint, make_small_world, stop_processes_mentioning
from capfilt.world.server import WorldServer

REPO = Path(__file__).resolve().parents[1]
ROWS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    # the `ray` script that belongs to this interpreter's environment
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    dashboard = free_port()
    # the head and its clients share a token made for this test (Ray enables token auth)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    started = ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                      "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                      f"--temp-dir={temp}", "--num-cpus=4", "--disable-usage-stats", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        stop_head(temp)


def stop_head(temp: Path, grace: float = 10.0) -> None:
    """Stop the processes of the head this test started, and only those: `ray stop` would end
    every Ray instance of the user on this machine."""
    stop_processes_mentioning(str(temp), grace)


def submit(head: dict, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job agent is still starting (it answers
    "No available agent" for a while after `ray start` returns; on a busy 2-core machine that
    took over a minute)."""
    deadline = time.monotonic() + 300
    while True:
        job = ray_cli("job", "submit", f"--address={head['address']}", *args, env=head["env"], timeout=400)
        if "No available agent" not in job.stderr + job.stdout or time.monotonic() > deadline:
            return job
        time.sleep(3)


@pytest.mark.slow
def test_ray_job_submit_runs_the_bootstrap_job(head, tmp_path):
    world = make_small_world(tmp_path / "world", ROWS)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    with WorldServer(world.root, port=0, slow_seconds=SLOW) as server:
        urls = world.write_urls(tmp_path / "web.csv", server.base_url)
        job = submit(
            head, f"--address={head['address']}", f"--working-dir={REPO}", "--",
            sys.executable, "-m", "pipelines.bootstrap", "--input", str(urls), "--output", str(out),
            "--captioner", str(checkpoint), "--filter", str(checkpoint), "--key-col", "key",
            "--allow-private-hosts", "--timeout", str(TIMEOUT), "--image-size", "64", "--shard-size", "8",
            "--num-captions", "2", "--max-length", "12", "--min-length", "3", "--cpus-per-actor", "1",
        )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "rows out" in job.stdout, "the summary table is printed at the end"
    # the driver's progress reaches `ray job logs` (what `submit` follows): rows done / total, rate, ETA
    assert f"bootstrap: rows {ROWS}/{ROWS} (100.0%)" in job.stdout and "rows/s, ETA" in job.stdout
    table = pq.read_table(out / "parquet")
    assert table.num_rows == ROWS and len(set(table.column("key").to_pylist())) == ROWS
    assert (out / "manifest.json").is_file()


def test_the_job_api_answers_only_requests_with_the_token(head, tmp_path):
    """What deploy/ turns on (RAY_AUTH_MODE=token) does close the job API: a request without the
    token or with another one is refused; the token from a file named by RAY_AUTH_TOKEN_PATH
    (how deploy/cluster.yaml hands it to a node) is accepted."""
    import urllib.error
    import urllib.request

    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # to the head, not a proxy
    with pytest.raises(urllib.error.HTTPError) as refused:
        direct.open(f"{head['address']}/api/jobs/", timeout=60)
    assert refused.value.code in (401, 403)
    token_file = tmp_path / "auth_token"
    without = {k: v for k, v in head["env"].items() if k != "RAY_AUTH_TOKEN"}
    for token, accepted in (("0" * 64, False), (head["env"]["RAY_AUTH_TOKEN"], True)):
        token_file.write_text(token)
        listed = ray_cli("job", "list", f"--address={head['address']}", env={**without, "RAY_AUTH_TOKEN_PATH": str(token_file)})
        assert (listed.returncode == 0) == accepted, listed.stdout[-2000:] + listed.stderr[-2000:]
