"""The download stage's address checks and whole-answer deadline, against real servers on
loopback: metadata and link-local addresses are refused whatever the settings and wherever a
redirect points; the connection goes to the address that was checked (no second DNS answer is
ever used); a server that trickles bytes loses its row at the deadline."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.schema import PENDING
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.url_guard import HostRefused, check_addresses

buf = io.BytesIO()
Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, "JPEG")
GOOD = buf.getvalue()
TRICKLE_BYTES = 40  # sent one per TRICKLE_GAP s; the server then closes without finishing
TRICKLE_GAP = 0.5


class Handler(http.server.BaseHTTPRequestHandler):
    """Records every request it serves (server address, path, Host header) on its server."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.server.seen.append((self.server.server_address[0], self.path, self.headers.get("Host")))
        if self.path.startswith("/to/"):  # /to/<url>: a redirect to <url>
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in ("/trickle-body", "/trickle-headers"):
            self.trickle(self.path == "/trickle-headers")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(GOOD)))
        self.end_headers()
        self.wfile.write(GOOD)

    def trickle(self, in_headers: bool) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
        try:
            if in_headers:
                data = head[:TRICKLE_BYTES]
            else:
                self.wfile.write(head)
                data = b"x" * TRICKLE_BYTES
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(TRICKLE_GAP)
            self.server.trickle_finished.append(self.path)  # all sent, and the client still reading
        except OSError:  # the client hung up first: what the deadline must make happen
            self.server.client_left.append(self.path)
        self.close_connection = True


def serve(host: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    httpd = http.server.ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    httpd.seen, httpd.trickle_finished, httpd.client_left = [], [], []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def servers():
    """The same port on 127.0.0.1 and 127.0.0.2: a rebinding host's two answers."""
    for _ in range(20):
        first = serve("127.0.0.1")
        try:
            second = serve("127.0.0.2", first.server_port)
            break
        except OSError:
            first.shutdown()
            first.server_close()
    else:
        pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")
    yield first, second
    for httpd in (first, second):
        httpd.shutdown()
        httpd.server_close()


def settings(tmp_path: Path, **kw) -> BootstrapSettings:
    base = dict(input=str(tmp_path / "in.csv"), output=tmp_path / "out", captioner=tmp_path, filter=tmp_path,
                allow_private_hosts=True, timeout=2.0, retries=0)
    base.update(kw)
    return BootstrapSettings(**base)


def run_stage(stage: DownloadStage, urls: list[str]) -> list[tuple[str, str | None]]:
    n = len(urls)
    rows = {"key": [f"{i:03d}" for i in range(n)], "url": urls, "web_caption": ["c"] * n, "shard": [0] * n,
            "status": [PENDING] * n, "error": [None] * n, "image": [None] * n}
    out = stage({k: np.array(v, dtype=object) for k, v in rows.items()}).to_pydict()
    return list(zip(out["status"], out["error"]))


METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # AWS, Azure, GCP, Oracle, ...
    "http://169.254.0.23/",  # Tencent
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS over IPv6
    "http://[fe80::1]/",  # IPv6 link-local
    "http://[::ffff:169.254.169.254]/",  # the same address written as IPv4-mapped IPv6
    "http://100.100.100.200/latest/meta-data/",  # Alibaba
    "http://192.0.0.192/",  # Oracle's older address
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./computeMetadata/v1/",
    "http://metadata.goog/",
    "http://ｍｅｔａｄａｔａ.google.internal/",  # fullwidth letters: the same name once IDNA-encoded
]


@pytest.mark.parametrize("allow_private", [True, False])
def test_metadata_and_link_local_urls_are_refused_with_or_without_allow_private_hosts(tmp_path, allow_private):
    got = run_stage(DownloadStage(settings(tmp_path, allow_private_hosts=allow_private)), METADATA_URLS)
    for url, (status, error) in zip(METADATA_URLS, got):
        assert status == "blocked_url", (url, status, error)
        assert "refused always" in error, (url, error)


def test_a_name_that_resolves_to_the_metadata_address_is_refused(tmp_path):
    asked = []

    def resolve(host, port, **kw):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    stage = DownloadStage(settings(tmp_path), resolve=resolve)
    [(status, error)] = run_stage(stage, ["http://innocent.example/cat.jpg"])
    assert status == "blocked_url" and "169.254.169.254" in error and asked == ["innocent.example"]


def test_a_redirect_into_metadata_or_to_another_scheme_is_refused(tmp_path, servers):
    first, _ = servers
    base = f"http://127.0.0.1:{first.server_port}"
    targets = ["http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/",
               "http://[fd00:ec2::254]/", "file:///etc/passwd", "ftp://127.0.0.1/x.jpg", f"{base}/good.jpg"]
    got = run_stage(DownloadStage(settings(tmp_path)), [f"{base}/to/{t}" for t in targets])
    assert [s for s, _ in got] == ["blocked_url"] * 5 + ["ok"], got
    assert "refused always" in got[0][1] and "metadata" in got[1][1] and "non-http(s)" in got[3][1]


def test_the_connection_goes_to_the_checked_address_not_a_second_dns_answer(tmp_path, servers):
    """DNS rebinding: the resolver answers 127.0.0.1 first and 127.0.0.2 after that. The fetch asks
    once per hop and connects to what it checked; the second server never sees a request."""
    first, second = servers
    port = first.server_port
    asked = []

    def rebinding(host, port_, **kw):
        asked.append(host)
        addr = "127.0.0.1" if len(asked) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port_))]

    first.seen.clear()
    second.seen.clear()
    [(status, error)] = run_stage(DownloadStage(settings(tmp_path), resolve=rebinding),
                                  [f"http://rebind.test:{port}/good.jpg"])
    assert status == "ok", error
    assert asked == ["rebind.test"], "one name lookup for one connection"
    assert first.seen == [("127.0.0.1", "/good.jpg", f"rebind.test:{port}")], "Host header keeps the name"
    assert second.seen == []


def test_a_host_with_any_refused_answer_is_refused():
    with pytest.raises(HostRefused, match="169.254.169.254"):
        check_addresses("mixed.test", ["8.8.8.8", "169.254.169.254"], allow_private=True)
    with pytest.raises(HostRefused, match="non-public address 10.0.0.1"):
        check_addresses("mixed.test", ["8.8.8.8", "10.0.0.1"], allow_private=False)
    assert [str(a) for a in check_addresses("ok.test", ["8.8.8.8", "10.0.0.1"], allow_private=True)] == [
        "8.8.8.8", "10.0.0.1"]


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_a_trickling_server_loses_its_row_at_the_deadline_not_when_it_stops(tmp_path, servers, path):
    """One byte every half second answers every socket read in time; the whole-answer deadline
    (1 s) must still end the row, long before the server's 40 bytes (20 s) are sent."""
    first, _ = servers
    first.client_left.clear()
    first.trickle_finished.clear()
    [(status, error)] = run_stage(DownloadStage(settings(tmp_path, timeout=1.0)),
                                  [f"http://127.0.0.1:{first.server_port}{path}"])
    assert status == "download_error" and "timed out" in error, error
    # the server finds out at its next write that the client hung up, not by sending all it had
    for _ in range(40):
        if first.client_left or first.trickle_finished:
            break
        time.sleep(0.25)
    assert first.client_left == [path] and first.trickle_finished == []


def test_odd_urls_each_get_their_row_status(tmp_path, servers):
    """A malformed URL is its row's download_error (not an exception that costs the batch); a
    Unicode host name is IDNA-encoded before it is resolved and sent as Host."""
    first, _ = servers
    port = first.server_port
    urls = ["http://[::1/x.jpg", "http://", f"http://127.0.0.1:{port}/a\r\nX-Injected: 1",
            f"http://ｌｏｃａｌｈｏｓｔ:{port}/good.jpg", "file:///etc/passwd", "data:,hello"]
    got = run_stage(DownloadStage(settings(tmp_path)), urls)
    assert [s for s, _ in got] == ["download_error", "download_error", "download_error", "ok",
                                   "blocked_url", "blocked_url"], got
    assert "malformed url" in got[0][1]


def test_https_connects_to_the_checked_address_and_still_verifies_the_name(tmp_path, servers, monkeypatch):
    """Over TLS the socket goes to the pinned address while SNI and the certificate check use the
    host name: a certificate for pinned.test is accepted for https://pinned.test, refused for
    another name that resolves to the same address."""
    import datetime
    import ssl

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # the test's certificate is the only CA trusted

    httpd = serve("127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_port
    asked = []

    def rebinding(host, port_, **kw):
        asked.append(host)
        addr = "127.0.0.1" if len(asked) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port_))]

    try:
        [(status, error)] = run_stage(DownloadStage(settings(tmp_path), resolve=rebinding),
                                      [f"https://pinned.test:{port}/good.jpg"])
        assert status == "ok", error
        assert asked == ["pinned.test"] and httpd.seen == [("127.0.0.1", "/good.jpg", f"pinned.test:{port}")]
        [(status, error)] = run_stage(DownloadStage(settings(tmp_path), resolve=lambda h, p, **kw: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))]), [f"https://other.test:{port}/good.jpg"])
        assert status == "download_error" and "certificate" in error.lower(), error
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_body_cut_short_by_the_server_is_a_download_error(tmp_path):
    """Content-Length promises more than the server sends before it closes: the fetch failed (and
    may be retried), it is not a truncated image."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_half():
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(GOOD) + GOOD[: len(GOOD) // 2])

        threading.Thread(target=answer_half, daemon=True).start()
        [(status, error)] = run_stage(DownloadStage(settings(tmp_path)),
                                      [f"http://127.0.0.1:{listener.getsockname()[1]}/half.jpg"])
    assert status == "download_error" and "bytes of the body missing" in error, (status, error)


def test_a_proxy_in_the_environment_is_not_used(tmp_path, servers, monkeypatch):
    """Through a proxy, the proxy would resolve the name and the check would not decide where the
    connection goes: the fetch goes straight to the checked address."""
    first, second = servers
    port = first.server_port
    monkeypatch.setenv("http_proxy", f"http://127.0.0.2:{port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.2:{port}")
    first.seen.clear()
    second.seen.clear()
    [(status, error)] = run_stage(DownloadStage(settings(tmp_path)), [f"http://127.0.0.1:{port}/good.jpg"])
    assert status == "ok", error
    assert [s[:2] for s in first.seen] == [("127.0.0.1", "/good.jpg")] and second.seen == []
