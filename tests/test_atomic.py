"""Atomic writes: a failed write leaves the old file and no debris; files get normal permissions."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from src.errors import DiskFullError, UserError
from src.utils.atomic import (
    atomic_link_or_copy,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    remove_temp_files,
)


def test_writes_replace_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["result.json"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, half_write)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_files_get_the_permissions_a_plain_open_would_give(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.parametrize(
    ("code", "error", "fragment"),
    [
        (errno.ENOSPC, DiskFullError, "No space left on device. Free space on that disk"),
        (errno.EDQUOT, DiskFullError, "Free space on that disk"),
        (errno.EROFS, UserError, "Read-only file system. Make its folder writable"),
        (errno.EACCES, UserError, "Permission denied. Make its folder writable"),
    ],
)
def test_a_full_or_unwritable_disk_is_one_user_error_behind_any_library(
        tmp_path: Path, code: int, error: type[Exception], fragment: str) -> None:
    """torch.save reports a failed write as a RuntimeError raised while handling the OSError."""
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def library_write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 576 vs 534")  # noqa: B904

    with pytest.raises(error, match=fragment):
        atomic_write_with(target, library_write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_other_write_failures_stay_what_they_were(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write_with(tmp_path / "x", broken)


def test_link_or_copy_links_without_touching_the_source(tmp_path: Path) -> None:
    """checkpoint_best.pt and a --teacher-from stage share the file; linking another run's file
    must leave it as it was (its permissions are its owner's)."""
    source = tmp_path / "other_run" / "model.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    source.chmod(0o600)
    target = tmp_path / "run" / "teacher" / "model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"older")
    assert atomic_link_or_copy(source, target) == target
    assert os.path.samefile(source, target) and target.read_bytes() == b"weights"
    assert stat.S_IMODE(source.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["model.safetensors"]


def test_link_or_copy_copies_where_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "checkpoint_latest.pt"
    source.write_bytes(b"state")

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # another file system

    monkeypatch.setattr(os, "link", no_links)
    target = atomic_link_or_copy(source, tmp_path / "checkpoint_best.pt")
    assert target.read_bytes() == b"state" and not os.path.samefile(source, target)
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pt", "checkpoint_latest.pt", "plain"]


def test_temp_files_of_named_targets_are_removed_and_nothing_else(tmp_path: Path) -> None:
    names = [".checkpoint_latest.pt.ab12.tmp", ".checkpoint_best.pt.cd34.tmp", ".epochs.csv.ef56.tmp",
             "notes.tmp", "checkpoint_latest.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_temp_files(tmp_path, "checkpoint_*.pt")
    assert sorted(path.name for path in removed) == sorted(names[:2])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert [path.name for path in remove_temp_files(tmp_path)] == [".epochs.csv.ef56.tmp"]
    assert remove_temp_files(tmp_path / "missing") == []
