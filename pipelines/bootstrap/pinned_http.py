"""One HTTP(S) fetch that connects only to addresses it checked, within one deadline.

urllib resolves a host name itself when it connects. A check done before that (resolve, look at
the address, then let urllib connect) asks DNS twice, and a host whose answer changes in between
(DNS rebinding) passes the check with one address and is connected to at another. Here the
connection classes resolve once, check every answer (url_guard.py), and connect to the checked
socket address; the Host header and the TLS server name (SNI, certificate check) still carry the
host name, since http.client takes them from the name, not from the socket.

The deadline covers the whole answer: connect, TLS, headers and body. A watchdog shuts the
fetch's sockets down when it passes, which ends a read that is blocked mid-way; a per-read
socket timeout alone cannot, since a server that sends one byte every half second answers every
read in time.

No proxy is used (urllib would otherwise take one from the environment): through a proxy the
proxy resolves the name, and the check would no longer decide where the connection goes.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from pipelines.bootstrap.url_guard import HostRefused, check_addresses, check_host_name

Resolver = Callable[..., list[tuple[Any, ...]]]


class FetchContext:
    """The state of one fetch (all its redirect hops): the resolver, the address policy, the
    deadline, and the sockets the watchdog ends when the deadline passes."""

    def __init__(self, timeout: float, allow_private: bool, resolve: Resolver = socket.getaddrinfo):
        self.timeout = timeout
        self.allow_private = allow_private
        self.resolve = resolve
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(timeout, self._expire)
        self._watchdog.daemon = True

    def __enter__(self) -> FetchContext:
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def past_deadline(self) -> bool:
        return self.expired or self.remaining() <= 0

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass

    def connect(self, address: tuple[str, int], timeout: float | None = None,
                source_address: Any = None) -> socket.socket:
        """http.client's `_create_connection`: resolve `address`'s host once, refuse it unless every
        answer passes the check, connect to the checked answers in turn."""
        host, port = address
        check_host_name(host)
        infos = self.resolve(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        if not infos:
            raise OSError(f"no address for {host}")
        check_addresses(host, [info[4][0] for info in infos], self.allow_private)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            if self.past_deadline():
                raise TimeoutError("deadline passed while connecting")
            sock = socket.socket(family, kind, proto)
            with self._lock:
                if self.expired:
                    sock.close()
                    raise TimeoutError("deadline passed while connecting")
                self._sockets.append(sock)
            try:
                sock.settimeout(max(0.001, min(timeout or self.timeout, self.remaining())))
                sock.connect(sockaddr)  # the address that was checked, not the name again
                return sock
            except OSError as exc:
                last = exc
                sock.close()
        assert last is not None
        raise last


def _pinned(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Pinned(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, fetch: FetchContext, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._create_connection = fetch.connect

    Pinned.__name__ = f"Pinned{base.__name__}"
    return Pinned


PinnedHTTPConnection = _pinned(http.client.HTTPConnection)
PinnedHTTPSConnection = _pinned(http.client.HTTPSConnection)


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, fetch: FetchContext):
        super().__init__()
        self.fetch = fetch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(PinnedHTTPConnection, fetch=self.fetch), req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, fetch: FetchContext, tls: ssl.SSLContext):
        super().__init__(context=tls)
        self.fetch = fetch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(PinnedHTTPSConnection, fetch=self.fetch), req,
                            context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows a redirect to ftp:// too, and answers file:// with a plain HTTP error; only
    http(s) is fetched here, and any other target is refused as such."""

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 (urllib's signature)
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, target)).scheme.lower()
            if scheme not in ("http", "https"):
                raise HostRefused(f"redirect to a non-http(s) url refused: {target[:80]}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def opener_for(fetch: FetchContext, tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """An opener with http(s) only (no file://, ftp://, data:, no proxy), every hop pinned. `tls`
    is shared by the fetches of a stage: making one loads the CA store (60 ms here)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_PinnedHTTPHandler(fetch), _PinnedHTTPSHandler(fetch, tls), _HttpOnlyRedirects(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                    urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener
