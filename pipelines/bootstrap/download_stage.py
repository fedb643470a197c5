"""Download, validate and resize: a CPU stage built on img2dataset's pieces.

img2dataset supplies the X-Robots-Tag opt-out check, its User-Agent convention and the Resizer
(every resize mode, JPEG encoding). Its `download_image` reads a body without any bound and
follows redirects anywhere, so the fetch itself is done here (pinned_http.py): it refuses
link-local and cloud metadata addresses always, and loopback/private ones unless allowed, on
every redirect hop (else a public URL could redirect into the cluster's network), connecting
only to the address it checked; it stops reading past `max_image_bytes`, and enforces the
timeout over the whole answer, not only per socket read (a server that trickles bytes would
otherwise hold a thread forever).

Every failure is a value: the row leaves with a status and an error, never an exception.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

# img2dataset imports albumentations, which otherwise asks the network for a newer version.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from img2dataset.downloader import is_disallowed  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.bootstrap.pinned_http import FetchContext, Resolver, opener_for  # noqa: E402
from pipelines.bootstrap.schema import (BLOCKED_URL, DECODE_ERROR, DOWNLOAD_ERROR, OK, PENDING, TOO_LARGE,
                                        as_table, batch_len, object_column)
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.stage_guard import guarded  # noqa: E402
from pipelines.bootstrap.url_guard import HostRefused  # noqa: E402

# img2dataset's browser User-Agent, with the same "(compatible; token; +url)" suffix convention.
BASE_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
CHUNK = 1 << 16


class FetchError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def user_agent(token: str | None) -> str:
    if not token:
        return BASE_USER_AGENT
    return f"{BASE_USER_AGENT} (compatible; {token}; +https://github.com/rom1504/img2dataset)"


def ascii_host(parts: urllib.parse.SplitResult) -> str:
    """The URL with its host name IDNA-encoded ("bücher.de" -> "xn--bcher-kva.de"), as DNS and the
    Host header need it; urllib would send a non-ASCII Host header and fail."""
    host = parts.hostname or ""
    if host.isascii():
        return parts.geturl()
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"host name is not valid IDNA: {exc}") from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port is not None else ""
    return parts._replace(netloc=f"{userinfo}{at}{encoded}{port}").geturl()


class DownloadStage:
    """Ray Data stage: rows with status 'pending' get status, error, image (JPEG), width, height."""

    def __init__(self, settings: BootstrapSettings, resolve: Resolver = socket.getaddrinfo):
        """`resolve` is getaddrinfo's stand-in: the one name lookup a fetch makes per hop."""
        self.settings = settings
        self.directives = settings.disallowed_directives
        self.token = settings.user_agent_token.strip().lower() if settings.user_agent_token else None
        self.user_agent = user_agent(settings.user_agent_token)
        self.resolve = resolve
        self.tls = ssl.create_default_context()  # one for every fetch: thread-safe, slow to make
        self.resizer = Resizer(image_size=settings.image_size, resize_mode=settings.resize_mode,
                               resize_only_if_bigger=settings.resize_only_if_bigger, encode_format="jpg")

    def fetch(self, url: str) -> bytes:
        """The body of `url`, or FetchError with the row's status."""
        try:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme.lower() not in ("http", "https"):
                raise FetchError(BLOCKED_URL, f"url scheme not http(s): {str(url)[:80]}")
            url = ascii_host(parts)
        except (ValueError, TypeError) as exc:  # "http://[::1/x": an unclosed IPv6 bracket, ...
            raise FetchError(DOWNLOAD_ERROR, f"malformed url: {exc}") from None
        timeout = self.settings.timeout
        request = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
        with FetchContext(timeout, self.settings.allow_private_hosts, self.resolve) as context:
            try:
                with opener_for(context, self.tls).open(request, timeout=timeout) as response:
                    if self.directives and is_disallowed(response.headers, self.token, self.directives):
                        raise FetchError(DOWNLOAD_ERROR, "Use of image disallowed by X-Robots-Tag directive")
                    length = response.headers.get("Content-Length")
                    if length and length.isdigit() and int(length) > self.settings.max_image_bytes:
                        raise FetchError(TOO_LARGE, f"Content-Length {length} > {self.settings.max_image_bytes}")
                    body = bytearray()
                    # read1: whatever one socket read returns, so the deadline is looked at after
                    # every read, however small (the watchdog ends a read that blocks past it)
                    while chunk := response.read1(CHUNK):
                        body += chunk
                        if len(body) > self.settings.max_image_bytes:
                            raise FetchError(TOO_LARGE, f"body larger than {self.settings.max_image_bytes} bytes")
                        if context.past_deadline():
                            raise FetchError(DOWNLOAD_ERROR, f"timed out: no whole answer within {timeout}s")
                    if context.past_deadline():  # the watchdog's shutdown reads as a clean end
                        raise FetchError(DOWNLOAD_ERROR, f"timed out: no whole answer within {timeout}s")
                    if response.length:  # read1, unlike read, takes an early close as the end
                        raise FetchError(DOWNLOAD_ERROR, f"connection closed with {response.length} bytes "
                                                         f"of the body missing")
                    return bytes(body)
            except FetchError:
                raise
            except HostRefused as exc:
                raise FetchError(BLOCKED_URL, str(exc)) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                if context.past_deadline():
                    raise FetchError(DOWNLOAD_ERROR, f"timed out: no whole answer within {timeout}s") from None
                raise FetchError(DOWNLOAD_ERROR, str(exc) or type(exc).__name__) from None

    def fetch_with_retries(self, url: str) -> bytes:
        for attempt in range(self.settings.retries + 1):
            try:
                return self.fetch(url)
            except FetchError as exc:
                # only a transient failure is worth another try
                if exc.status != DOWNLOAD_ERROR or attempt == self.settings.retries:
                    raise
        raise AssertionError("unreachable")

    def decode_and_resize(self, data: bytes) -> tuple[bytes, int, int]:
        # cv2 (inside the Resizer) decodes a truncated JPEG into a half-grey image without a word;
        # PIL's full load refuses it, so it checks first.
        try:
            with Image.open(io.BytesIO(data)) as img:
                # PIL only warns between MAX_IMAGE_PIXELS and twice that, and the Resizer's decoder
                # would then expand a few hundred KB into gigabytes of pixels
                if img.width * img.height > Image.MAX_IMAGE_PIXELS:
                    raise FetchError(DECODE_ERROR, f"image has {img.width}x{img.height} pixels, more than "
                                                   f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)")
                img.load()
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
            # drop object addresses ("<_io.BytesIO object at 0x7f..>"): the same input must give
            # the same error text in every run, or a resumed run would differ
            raise FetchError(DECODE_ERROR, re.sub(r" object at 0x[0-9a-f]+", "", f"cannot decode image: {exc}")) from None
        image, width, height, _, _, err = self.resizer(io.BytesIO(data))
        if err is not None or image is None:
            raise FetchError(DECODE_ERROR, err or "resize failed")
        return image, int(width), int(height)

    def process_row(self, url: str | None, image: bytes | None
                    ) -> tuple[str, str | None, bytes | None, int | None, int | None, bytes | None]:
        """(status, error, resized JPEG, width, height, the source bytes as fetched)."""
        try:
            data = image if image is not None else self.fetch_with_retries(url or "")
            jpeg, width, height = self.decode_and_resize(data)
            return OK, None, jpeg, width, height, data
        except FetchError as exc:
            return exc.status, str(exc)[:500], None, None, None, None

    @guarded("download")
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        start = time.perf_counter()
        n = batch_len(batch)
        todo = [i for i in range(n) if batch["status"][i] == PENDING]
        status = list(batch["status"])
        error = list(batch["error"])
        images: list[Any] = [None] * n
        widths: list[Any] = [None] * n
        heights: list[Any] = [None] * n
        sources: list[Any] = [None] * n
        with ThreadPoolExecutor(max_workers=max(1, min(self.settings.download_threads, len(todo)))) as pool:
            results = pool.map(lambda i: self.process_row(batch["url"][i], batch["image"][i]), todo)
            for i, (st, err, img, w, h, src) in zip(todo, results):
                status[i], error[i], images[i], widths[i], heights[i], sources[i] = st, err, img, w, h, src
        out = dict(batch)
        out.update(status=object_column(status), error=object_column(error), image=object_column(images),
                   width=object_column(widths), height=object_column(heights))
        seconds = np.zeros(n)
        if todo:  # wall time of the batch (fetches overlap), shared by the rows it fetched
            seconds[todo] = (time.perf_counter() - start) / len(todo)
        out["_seconds_download"] = seconds
        if not self.settings.download_only and self.settings.model_image == "original":
            out["_source_image"] = object_column(sources)  # bounded by max_image_bytes; never written
        return as_table(out)
