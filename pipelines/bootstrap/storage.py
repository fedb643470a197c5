"""The bootstrap's one door to a filesystem: local folders and any fsspec URL (s3://, gs://, ...).

Credentials and endpoints come the way s3fs/gcsfs users already set them: the environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, fsspec's FSSPEC_S3_* ...)
or `storage_options`, a mapping of protocol -> keyword arguments of that filesystem
(`{"s3": {"endpoint_url": "http://..."}}`), as fsspec's own config file is laid out.

Object storage has no rename and no fsync: `put` writes a whole object in one request there (an
object appears whole or not at all), and on a local disk writes a temporary file and renames it
into place. Either way a reader never sees half a file; what makes a shard *committed* is its
marker, written last (see layout.py).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Iterator

import fsspec

from model.atomic_write import replace_file

LOCAL_PROTOCOLS = {"file", "local"}


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def open_fs(url: str, storage_options: dict[str, dict[str, Any]] | None = None
            ) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for `url`, with the options given for its protocol."""
    options = dict((storage_options or {}).get(protocol_of(url), {}))
    return fsspec.core.url_to_fs(url, **options)


class Storage:
    """A root folder on some filesystem; every path below is relative to it, '/'-separated."""

    def __init__(self, url: str, storage_options: dict[str, dict[str, Any]] | None = None):
        self.url = url.rstrip("/") if url not in ("/",) else url
        self.storage_options = storage_options or {}
        self.fs, self.root = open_fs(self.url, self.storage_options)
        self.root = self.root.rstrip("/")
        self.local = protocol_of(self.url) in LOCAL_PROTOCOLS

    # Ray ships a Storage to workers by pickling; the filesystem object is rebuilt there, so
    # that no client (sockets, event loops) crosses a process boundary.
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str) -> str:
        """The full URL of `rel` (what another process, or Ray Data, opens)."""
        return self.fs.unstrip_protocol(self.path(rel)) if not self.local else self.path(rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def is_empty(self) -> bool:
        """True when the root does not exist or holds nothing."""
        if not self.fs.exists(self.root):
            return True
        try:
            return not self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return True

    def put(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if self.local:
            replace_file(path, data)  # the old name absent or the whole file
        else:
            self.fs.pipe_file(path, data)

    def get(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any):
        return self.fs.open(self.path(rel), mode, **kwargs)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly in folder `rel`; [] when it does not exist."""
        folder = self.path(rel)
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") != "directory")

    def walk_files(self, rel: str) -> Iterator[str]:
        """Paths relative to the root of every file under folder `rel`."""
        base = self.path(rel)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        for path in sorted(found):
            yield posixpath.relpath(path, self.root)

    def remove(self, rels: list[str]) -> None:
        paths = [self.path(r) for r in rels]
        if paths:
            self.fs.rm(paths)

    def remove_tree(self, rel: str) -> None:
        path = self.path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def make_root(self) -> None:
        if self.local:
            os.makedirs(self.root, exist_ok=True)
