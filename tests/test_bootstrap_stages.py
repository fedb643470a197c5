"""The download stage without Ray, on hand-made batches and a loopback server."""

from __future__ import annotations

import http.server
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.schema import PENDING
from pipelines.bootstrap.settings import BootstrapSettings


def jpeg(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


GOOD = jpeg()
ROUTES = {
    "/good.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD),
    "/truncated.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD[: len(GOOD) // 2]),
    "/page.html": (200, {"Content-Type": "text/html"}, b"<html><body>not an image</body></html>"),
    "/big.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD + b"\0" * 30_000),
    "/noai.jpg": (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"}, GOOD),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/slow.jpg":
            time.sleep(3)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/good.jpg")
            self.end_headers()
            return
        code, headers, body = ROUTES.get(self.path, (404, {}, b"missing"))
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def settings(tmp_path: Path, **kw) -> BootstrapSettings:
    base = dict(input=str(tmp_path / "in.csv"), output=tmp_path / "out", captioner=tmp_path, filter=tmp_path,
                allow_private_hosts=True, timeout=1.0, max_image_bytes=20_000)
    base.update(kw)
    return BootstrapSettings(**base)


def work_batch(urls: list[str]) -> dict[str, np.ndarray]:
    n = len(urls)
    rows = {"key": [f"{i:03d}" for i in range(n)], "url": urls, "web_caption": ["a cap"] * n, "shard": [0] * n,
            "status": [PENDING] * n, "error": [None] * n, "image": [None] * n}
    return {k: np.array(v, dtype=object) for k, v in rows.items()}


def test_download_statuses(server, tmp_path):
    names = ["good.jpg", "missing.jpg", "truncated.jpg", "page.html", "big.jpg", "slow.jpg", "noai.jpg", "redirect"]
    out = DownloadStage(settings(tmp_path))(work_batch([f"{server}/{n}" for n in names])).to_pydict()
    got = dict(zip(names, out["status"]))
    assert got == {"good.jpg": "ok", "missing.jpg": "download_error", "truncated.jpg": "decode_error",
                   "page.html": "decode_error", "big.jpg": "too_large", "slow.jpg": "download_error",
                   "noai.jpg": "download_error", "redirect": "ok"}
    assert "X-Robots-Tag" in out["error"][6] and "404" in out["error"][1]
    assert out["image"][0][:2] == b"\xff\xd8" and out["width"][0] == 256 and out["height"][0] == 256
    assert out["image"][1] is None and out["width"][1] is None


def test_loopback_is_blocked_unless_allowed(server, tmp_path):
    out = DownloadStage(settings(tmp_path, allow_private_hosts=False))(work_batch([f"{server}/good.jpg"])).to_pydict()
    assert out["status"][0] == "blocked_url" and "127.0.0.1" in out["error"][0]


def test_opt_out_and_resize_knobs(server, tmp_path):
    stage = DownloadStage(settings(tmp_path, disallowed_header_directives=[], resize_mode="keep_ratio", image_size=60))
    out = stage(work_batch([f"{server}/noai.jpg"])).to_pydict()
    assert out["status"][0] == "ok" and (out["width"][0], out["height"][0]) == (80, 60)
    out = DownloadStage(settings(tmp_path, resize_mode="no"))(work_batch([f"{server}/good.jpg"])).to_pydict()
    assert (out["width"][0], out["height"][0]) == (40, 30)


def test_image_already_present_skips_fetch(tmp_path):
    batch = work_batch(["http://nowhere.invalid/x.jpg"])
    batch["image"][0] = GOOD
    out = DownloadStage(settings(tmp_path, allow_private_hosts=False))(batch).to_pydict()
    assert out["status"][0] == "ok"


def test_keep_decisions():
    from pipelines.bootstrap.filter_stage import keep_decisions

    assert keep_decisions([0.2, 0.8, 0.9], 0.5, "all") == [False, True, True]
    assert keep_decisions([0.2, 0.8, 0.9], 0.5, "best") == [False, False, True]
    assert keep_decisions([0.2, 0.3], 0.5, "best") == [False, False]
    assert keep_decisions([0.2, 0.3], 1.0, "all") == [False, False]
