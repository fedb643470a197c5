"""Serve a made world over HTTP, with the web's failures built in.

`GET /web/<key>.<jpg|png>` answers as the world's labels say (column `fetch`):

| fetch       | answer                                                              |
|-------------|---------------------------------------------------------------------|
| ok          | 200, the image                                                      |
| not_found   | 404                                                                 |
| truncated   | 200 with an image content type, but only the first half of the file |
| not_image   | 200, an HTML page                                                   |
| slow        | the image, after `slow_seconds` (longer than a download timeout)    |

`GET /images/<split>/<file>` serves the clean splits' images as they are, and `GET /` a short
text summary. Runs in a background thread (`with WorldServer(out, port=0) as server:`) or in the
foreground (`capfilt world serve`).
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from capfilt.world import layout

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
NOT_IMAGE_PAGE = (b"<!DOCTYPE html><html><head><title>Image gallery</title></head><body>"
                  b"<h1>This image has moved</h1><p>Click <a href=\"/\">here</a> to enlarge.</p></body></html>")
_WEB_PATH = re.compile(r"^/web/([A-Za-z0-9_-]+)\.(jpg|png)$")
_IMAGE_PATH = re.compile(r"^/images/([a-z]+)/([A-Za-z0-9_/-]+\.(?:jpg|png))$")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.world.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _send(self, status: int, content_type: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        world = self.server.world
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, "text/plain; charset=utf-8", world.summary().encode(), body)
            return
        m = _WEB_PATH.match(path)
        if m:
            self._web(m.group(1), m.group(2), body)
            return
        m = _IMAGE_PATH.match(path)
        if m and m.group(1) != "web" and ".." not in m.group(2):
            file = world.root / "images" / m.group(1) / m.group(2)
            if file.is_file():
                self._send(200, CONTENT_TYPES[file.suffix[1:]], file.read_bytes(), body)
                return
        self._send(404, "text/plain", b"not found\n", body)

    def _web(self, key: str, fmt: str, body: bool) -> None:
        world = self.server.world
        with world.lock:
            world.web_requests[key] = world.web_requests.get(key, 0) + 1
        entry = world.web.get(key)
        if entry is None or entry[0] != fmt or entry[1] == "not_found":
            self._send(HTTPStatus.NOT_FOUND, "text/html", b"<html><body>404 Not Found</body></html>", body)
            return
        fetch = entry[1]
        if fetch == "not_image":
            self._send(200, "text/html; charset=utf-8", NOT_IMAGE_PAGE, body)
            return
        data = (world.root / layout.image_relpath("web", key, fmt)).read_bytes()
        if fetch == "truncated":
            data = data[: len(data) // 2]
        elif fetch == "slow" and world.stopping.wait(world.slow_seconds):
            return  # the server is stopping: drop the answer
        self._send(200, CONTENT_TYPES[fmt], data, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops connections from a downloader with many threads, and a
    # dropped SYN costs a 1 s retransmit: enough to time out rows that were meant to work.
    request_queue_size = 256
    world: "WorldServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that gave up (a timeout on a slow row) is expected here, not an error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class WorldServer:
    """Serves the world in `root`; `port=0` picks a free port (see `base_url`)."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, slow_seconds: float = 30.0,
                 verbose: bool = False):
        self.root = Path(root)
        if not (self.root / layout.WEB_LABELS).is_file():
            raise FileNotFoundError(f"{self.root} holds no world (no {layout.WEB_LABELS})")
        labels = pq.read_table(self.root / layout.WEB_LABELS, columns=["key", "format", "fetch"]).to_pydict()
        self.web: dict[str, tuple[str, str]] = {
            k: (f, x) for k, f, x in zip(labels["key"], labels["format"], labels["fetch"])
        }
        self.slow_seconds = slow_seconds
        self.verbose = verbose
        self.stopping = threading.Event()
        # web key -> requests for it: what a test reads to see that a corpus was fetched once
        self.web_requests: dict[str, int] = {}
        self.lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.world = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for _, fetch in self.web.values():
            counts[fetch] = counts.get(fetch, 0) + 1
        return (f"capfilt toy world at {self.base_url}\nweb images: {len(self.web)}\n"
                f"fetch outcomes: {json.dumps(dict(sorted(counts.items())))}\n"
                f"slow answers wait {self.slow_seconds:g} s\n")

    def start(self) -> "WorldServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="world-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "WorldServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
