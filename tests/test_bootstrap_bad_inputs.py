"""Every kind of bad input at once, through `capfilt bootstrap` as a user runs it (its own process,
its own local Ray, the tiny random checkpoints), against one hostile server on loopback.

The run must end; every input row comes out, with a status, and with a reason unless it is ok;
nothing of a local file reaches the output; the job's processes stay under a stated memory bound
(their kernel-kept peak RSS, VmHWM, read while they run)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bootstrap_world import make_checkpoint, processes_mentioning, stop_processes_mentioning
from pipelines.bootstrap.schema import STATUSES

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 2.0
MAX_IMAGE_BYTES = 200_000
# The bound the job's every process must stay under (peak RSS). A tiny-model worker peaks near
# 0.65 GiB here; the bomb below, decoded by the Resizer, adds 0.32 GiB per copy (measured), and
# four are fetched side by side by one download task's threads.
PEAK_RSS_BOUND = 1.5 * 2**30
SECRET = "capfilt-local-secret-7d1c"


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 36), (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG of width x height zero pixels: a few hundred KB on the wire, width*height bytes
    or more once a decoder expands it (built by hand: PIL would hold the whole image first)."""
    row = b"\0" + b"\0" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


GOOD = jpeg()
# 13000 x 13000 = 169 M pixels: over PIL's bomb warning (89 M), under its error (179 M), so only
# a pixel cap of the pipeline's own refuses it
BOMB = png_bomb(13000, 13000)  # 20 KB


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code: int, body: bytes, content_type: str = "image/jpeg", length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):  # noqa: N802, C901 (one route per case)
        path = self.path.split("?", 1)[0]  # a query only makes a URL (and its row) distinct
        try:
            if path == "/good.jpg":
                self.send(200, GOOD)
            elif path == "/truncated.jpg":
                self.send(200, GOOD[: len(GOOD) // 2])
            elif path == "/empty.jpg":
                self.send(200, b"")
            elif path == "/html.jpg":
                self.send(200, b"<!doctype html><html><body>an HTML page served as a JPEG</body></html>")
            elif path == "/bomb.png":
                self.send(200, BOMB, "image/png")
            elif path == "/big-with-length.jpg":
                self.send(200, GOOD + b"\0" * MAX_IMAGE_BYTES)
            elif path == "/big-without-length.jpg":  # ends when the connection closes
                self.send(200, GOOD + b"\0" * (3 * MAX_IMAGE_BYTES), length=False)
            elif path == "/slow.jpg":
                time.sleep(TIMEOUT + 3)
                self.send(200, GOOD)
            elif path == "/trickle.jpg":
                self.send_response(200)
                self.send_header("Content-Length", "4000")
                self.end_headers()
                for _ in range(40):  # one byte per 0.5 s: 20 s, then the server gives up
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.5)
                self.close_connection = True
            elif path == "/redirect-good":
                self.send_response(302)
                self.send_header("Location", "/good.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path.startswith("/loop"):
                self.send_response(302)
                self.send_header("Location", "/loop-a" if path == "/loop-b" else "/loop-b")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/error-500":
                self.send(500, b"internal error", "text/plain")
            elif path == "/reset.jpg":  # half the body, then a TCP reset
                self.send_response(200)
                self.send_header("Content-Length", str(len(GOOD)))
                self.end_headers()
                self.wfile.write(GOOD[: len(GOOD) // 2])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            else:
                self.send(404, b"not found", "text/plain")
        except OSError:  # the client gave up first (timeouts, size limits): expected here
            self.close_connection = True


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def cases(base: str, secret_file: Path) -> list[tuple[str, str | None, str | None, str]]:
    """(key, url, caption, the status the row must leave with)."""
    port = base.rsplit(":", 1)[1]
    urls = [
        ("good", f"{base}/good.jpg", "ok"),
        ("truncated", f"{base}/truncated.jpg", "decode_error"),
        ("zero_bytes", f"{base}/empty.jpg", "decode_error"),
        ("html_as_image", f"{base}/html.jpg", "decode_error"),
        ("bomb", f"{base}/bomb.png", "decode_error"),
        ("bomb_2", f"{base}/bomb.png?2", "decode_error"),
        ("bomb_3", f"{base}/bomb.png?3", "decode_error"),
        ("bomb_4", f"{base}/bomb.png?4", "decode_error"),
        ("too_large_length", f"{base}/big-with-length.jpg", "too_large"),
        ("too_large_no_length", f"{base}/big-without-length.jpg", "too_large"),
        ("slow", f"{base}/slow.jpg", "download_error"),
        ("trickle", f"{base}/trickle.jpg", "download_error"),
        ("redirect_good", f"{base}/redirect-good", "ok"),
        ("redirect_loop", f"{base}/loop-a", "download_error"),
        ("not_found", f"{base}/missing.jpg", "download_error"),
        ("server_error", f"{base}/error-500", "download_error"),
        ("reset", f"{base}/reset.jpg", "download_error"),
        ("scheme_file", f"file://{secret_file}", "bad_row"),
        ("scheme_ftp", f"ftp://127.0.0.1:{port}/good.jpg", "bad_row"),
        ("scheme_data", "data:image/jpeg;base64," + base64.b64encode(GOOD).decode(), "bad_row"),
        ("scheme_none", f"127.0.0.1:{port}/good.jpg", "bad_row"),
        ("scheme_relative", f"//127.0.0.1:{port}/good.jpg", "bad_row"),
        ("malformed_no_host", "http://", "download_error"),
        ("malformed_ipv6", "http://[::1/good.jpg", "download_error"),
        ("malformed_port", "http://127.0.0.1:99999/good.jpg", "download_error"),
        ("malformed_space", "http://bad host/x.jpg", "download_error"),
        ("malformed_header_injection", f"{base}/good.jpg\r\nX-Injected: 1", "download_error"),
        ("empty_url", "", "bad_row"),
        ("null_url", None, "bad_row"),
        ("unicode_host", "http://bücher.invalid/bild.jpg", "download_error"),
        ("unicode_host_cjk", "http://例え.テスト/画像.jpg", "download_error"),
        # fullwidth letters that IDNA maps to "localhost": the same host as 127.0.0.1
        ("unicode_host_fullwidth", f"http://ｌｏｃａｌｈｏｓｔ:{port}/good.jpg", "ok"),
        ("unicode_path", f"{base}/ünïcödé.jpg", "download_error"),
    ]
    rows = [(key, url, "a web caption", status) for key, url, status in urls]
    captions = [("caption_null", None), ("caption_empty", ""), ("caption_100kb", "long " * 20_000),
                ("caption_control", "ctl\x00nul\x01\x1b[31mred\x7f\u202egnp.exe\r\n\ttab")]
    rows += [(key, f"{base}/good.jpg?{key}", caption, "ok") for key, caption in captions]
    return rows


def write_inputs(folder: Path, rows: list[tuple[str, str | None, str | None, str]]) -> dict[str, str]:
    """The cases as Parquet, plus a CSV with invalid UTF-8; the status each key must get."""
    folder.mkdir()
    pq.write_table(pa.table({"key": [r[0] for r in rows], "url": [r[1] for r in rows],
                             "caption": [r[2] for r in rows]}), folder / "cases.parquet")
    want = {r[0]: r[3] for r in rows}
    good = rows[0][1]
    (folder / "latin1.csv").write_bytes(
        b"key,url,caption\n"
        b"csv_ok," + good.encode() + b"?csv,plain caption\n"
        b"csv_bad_caption," + good.encode() + b"?latin1,caf\xe9 cr\xe8me\n"
        b"csv_bad_url," + good.encode() + b"?\xff\xfe,fine\n"
        b"csv_after," + good.encode() + b"?after,the row after\n")
    want.update(csv_ok="ok", csv_bad_caption="bad_row", csv_bad_url="bad_row", csv_after="ok")
    return want


def peak_rss(pids: set[int], peaks: dict[int, int]) -> None:
    """Each process's VmHWM (its peak resident set, kept by the kernel) into `peaks`."""
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
        except OSError:  # ended between the listing and the read
            pass


@pytest.mark.slow
def test_every_bad_input_leaves_as_a_row_with_its_status_and_reason(server, tmp_path):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    rows = cases(server, secret_file)
    want = write_inputs(tmp_path / "in", rows)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ray-bad-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "capfilt", "bootstrap", "--input", str(tmp_path / "in"), "--output", str(out),
               "--captioner", str(checkpoint), "--filter", str(checkpoint), "--key-col", "key",
               "--allow-private-hosts", "--timeout", str(TIMEOUT), "--retries", "0",
               "--max-image-bytes", str(MAX_IMAGE_BYTES), "--image-size", "64", "--shard-size", "16",
               "--batch-size", "8", "--download-batch-size", "8", "--download-threads", "4",
               "--max-length", "12", "--min-length", "3", "--threshold", "0"]
    peaks: dict[int, int] = {}
    log = tmp_path / "job.log"
    try:
        with open(log, "wb") as log_file:
            job = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while job.poll() is None and time.monotonic() < deadline:
            peak_rss({job.pid, *processes_mentioning(ray_tmp)}, peaks)
            time.sleep(0.2)
        if job.poll() is None:
            job.kill()
            pytest.fail(f"the job did not end within 600 s: {log.read_text(errors='replace')[-3000:]}")
    finally:
        stop_processes_mentioning(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == 0, log.read_text(errors="replace")[-3000:]

    got = {r["key"]: r for r in pq.read_table(out / "parquet").to_pylist()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_rows"] == manifest["output_rows"] == len(want) == len(got), "rows out = rows in"
    assert set(got) == set(want)
    for key, row in got.items():
        assert row["status"] in STATUSES and row["status"] == want[key], (key, row["status"], row["error"])
        assert (row["error"] is None) == (row["status"] == "ok"), (key, row["error"])
    reasons = {k: r["error"] for k, r in got.items()}
    assert "timed out" in reasons["slow"] and "timed out" in reasons["trickle"]
    assert "pixels" in reasons["bomb"] and "404" in reasons["not_found"] and "500" in reasons["server_error"]
    assert "redirect" in reasons["redirect_loop"] and "UTF-8" in reasons["csv_bad_caption"]
    for key, caption in [(r[0], r[2]) for r in rows if r[0].startswith("caption_")]:
        row = got[key]
        assert row["web_caption"] == caption and len(row["synthetic_captions"]) == 1, key
        assert (row["web_itm"] is None) == (caption is None), (key, row["web_itm"])  # no caption, no score

    # nothing of the local file: not in a row, not in a tar, not in any file the job wrote
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert not any(SECRET in json.dumps(r) for r in got.values())

    biggest = max(peaks.values())
    print(f"peak RSS: largest process {biggest / 2**30:.2f} GiB, {len(peaks)} processes, "
          f"sum of peaks {sum(peaks.values()) / 2**30:.2f} GiB")
    assert len(peaks) > 2, "the job's Ray processes were measured"
    assert biggest < PEAK_RSS_BOUND, f"a process of the job peaked at {biggest / 2**30:.2f} GiB"


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """The fast check of the same thing, without Ray: PIL only warns about this image's size, and the
    Resizer would expand it; the stage refuses it from the header."""
    from pipelines.bootstrap.download_stage import DownloadStage
    from pipelines.bootstrap.settings import BootstrapSettings

    stage = DownloadStage(BootstrapSettings(input="x.csv", output=tmp_path, download_only=True))
    status, error, image, *_ = stage.process_row(None, BOMB)
    assert status == "decode_error" and "13000x13000 pixels" in error and image is None
    assert stage.process_row(None, GOOD)[0] == "ok"


def test_an_output_that_cannot_be_written_stops_the_job_with_the_reason(tmp_path, capsys):
    """A file where the output folder should be: one line naming the output and the OS's reason,
    exit 1, before Ray starts and before anything is written."""
    from capfilt.cli import main as capfilt_main

    (tmp_path / "in.csv").write_text("url,caption\nhttp://127.0.0.1:9/x.jpg,c\n")
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out"
    code = capfilt_main(["bootstrap", "--input", str(tmp_path / "in.csv"), "--output", str(out), "--download-only"])
    err = capsys.readouterr().err
    assert code == 1 and f"output {out} cannot be written" in err and "Not a directory" in err, err
    assert "Traceback" not in err
