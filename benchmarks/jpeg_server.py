"""N distinct JPEGs served on loopback, and the url + caption + key table that points at them.

The images are smooth colour fields with shapes and a little noise (so JPEG sizes are
photo-like, ~20-40 kB at 384 px), made from a seed; the web captions are short sentences of the
benchmark tokenizer's words. The server is a ThreadingHTTPServer in a daemon thread.
"""

from __future__ import annotations

import io
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
SHAPES = ("circle", "square", "triangle", "star")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def make_images(folder: Path, count: int, size: int = 384, seed: int = 0) -> list[str]:
    """count JPEGs named 00000.jpg...; returns their web captions (made once: existing files are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions = []
    for i in range(count):
        colour, shape, place = (COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                                PLACES[rng.integers(len(PLACES))])
        captions.append(f"a {colour} {shape} {place}")
        path = folder / f"{i:05d}.jpg"
        if path.is_file():
            continue
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-120, 120, (2, 3))
        pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 12, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 16, size // 4))]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
    return captions


def write_input(path: Path, base_url: str, captions: list[str]) -> Path:
    """Parquet of url, caption, key for the first len(captions) images."""
    table = pa.table({"url": [f"{base_url}/{i:05d}.jpg" for i in range(len(captions))],
                      "caption": captions, "key": [f"{i:05d}" for i in range(len(captions))]})
    pq.write_table(table, path)
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class JpegServer:
    """`with JpegServer(folder) as server:` serves folder's files at server.base_url."""

    def __init__(self, folder: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "JpegServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
