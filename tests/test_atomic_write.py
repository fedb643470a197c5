"""model/atomic_write.py, the one way files and folders are replaced: the new version is written
beside the old, then takes its name; a failed write leaves the old one as it was, and a folder
(a model) is present at every moment, including while the new one is written."""

import os
from pathlib import Path

import pytest

from model.atomic_write import _exchange, replace_file, replacing_folder, swap_in


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_replace_file_writes_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "run.json"
    replace_file(path, "first")
    replace_file(path, b"second")
    assert path.read_text() == "second" and _siblings(path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it


def test_replace_file_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.json"
    replace_file(path, "old")
    with pytest.raises(TypeError):
        replace_file(path, 12345)  # not bytes: the write fails after the temporary file exists
    assert path.read_text() == "old" and _siblings(path) == []


def test_old_folder_stays_whole_while_the_new_one_is_written(tmp_path):
    model = tmp_path / "model"
    with replacing_folder(model) as tmp:
        (tmp / "weights").write_text("v1")
    with replacing_folder(model) as tmp:
        (tmp / "weights").write_text("v2")
        assert (model / "weights").read_text() == "v1"  # the old model, untouched, until the swap
        assert tmp.parent == model.parent and tmp != model
    assert (model / "weights").read_text() == "v2" and _siblings(model) == []


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    model = tmp_path / "model"
    with replacing_folder(model) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing_folder(model) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (model / "weights").read_text() == "v1" and _siblings(model) == []


def test_swap_in_trades_places_in_one_step_where_the_os_can(tmp_path):
    old, new = tmp_path / "model", tmp_path / ".model.new"
    old.mkdir()
    (old / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    if not _exchange(new, old):
        pytest.skip("this OS or filesystem has no atomic exchange; swap_in renames the old folder aside")
    assert (old / "weights").read_text() == "new" and (new / "weights").read_text() == "old"
    swap_in(new, old)  # swapped back: the "finished" folder is now the old content
    assert (old / "weights").read_text() == "old" and _siblings(old) == []


def test_a_replaced_folder_has_a_plain_folder_s_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with replacing_folder(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("v1")
    assert (tmp_path / "model").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
