"""Replacing a file or a folder atomically, the one way every writer here does it: the new content
goes to a temporary sibling, then takes the name in one step. A reader (or a resumed run) sees the
old version or the whole new one, never half of one, and a replaced folder (a model) is never
missing: on Linux the two folders trade places in one rename (renameat2 RENAME_EXCHANGE); where that
is not available the old one is renamed aside just before the new one takes its name.

In model/ because checkpoints are written here; pipelines/ and capfilt/ import it from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def replace_file(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write `data` to `path` atomically (flushed to disk before the rename); parents made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # one per writer, threads too
    try:
        # mode 0o666 less the umask, as a plain open() gives (mkstemp would make it 0600)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the OS or the filesystem cannot."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(finished: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Put the folder `finished` (a sibling of `directory`) at `directory`, replacing any old
    folder there, which is then deleted."""
    finished, directory = Path(finished), Path(directory)
    if not directory.exists():
        os.replace(finished, directory)
        return directory
    if _exchange(finished, directory):  # `finished` now holds the old folder
        shutil.rmtree(finished, ignore_errors=True)
        return directory
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    os.replace(directory, old / directory.name)
    os.replace(finished, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


@contextlib.contextmanager
def replacing_folder(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty temporary sibling of `directory` to write; when the block ends without an
    error, it replaces `directory` (swap_in). On an error the old folder is left as it was and the
    temporary one removed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the folder gets the mode a plain mkdir gives (0777 less the umask), not
    # 0700, so that a model on a shared volume stays readable by the other pods' users
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        swap_in(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
