"""A real S3 API on loopback for the tests: moto's server mode, started and stopped by the test.

s3fs (and every worker process Ray starts, which inherits the environment) reaches it through the
standard AWS variables, as a user's cluster reaches its object store."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_SESSION_TOKEN": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(bucket: str = "capfilt") -> Iterator[str]:
    """Starts moto's S3 server on a free loopback port, points the AWS environment at it, makes
    `bucket`; yields the endpoint URL; stops the server and restores the environment."""
    import logging

    from moto.core.base_backend import BackendDict
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # moto keeps its buckets in process-wide state: every server starts (and leaves) a clean slate
    BackendDict.reset()
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        BackendDict.reset()
