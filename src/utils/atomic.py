"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every file the product writes goes through here: the data goes to a temporary file in the
same folder, is flushed and fsynced, then renamed over the target (an atomic operation on
POSIX file systems), and the folder itself is fsynced so the rename survives power loss.

A full disk (or a quota, or a file-size limit) surfaces here as :class:`DiskFullError`, and a
folder that cannot be written as a UserError: one line for the user. The temporary file is
removed and the old target is untouched, so nothing already saved is lost and the same command
continues once the cause is gone. Libraries that write through a Python file object keep the
operating system's error in their exception chain (torch.save reports a write failure as a
RuntimeError caused by it), which is where it is found.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from src.errors import DiskFullError, UserError

TEMP_SUFFIX = ".tmp"
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # no room, quota, file-size limit
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})  # permissions, read-only file system


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives (mkstemp's temp files are 0600, which
    would hide shared run directories from colleagues). Read once: ``os.umask`` can only be
    read by setting it."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _plain_file_mode()


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it over ``path`` atomically.

    ``write`` receives a path (not a handle) so that libraries which insist on a file name
    (``torch.save``, ``safetensors.torch.save_file``, ``matplotlib``'s ``savefig``) work too.
    On any failure the temporary file is removed and the old ``path`` is left untouched.
    """
    def written(tmp: Path) -> bool:
        write(tmp)
        return True

    return _replace_with(path, written)


def atomic_link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make ``target`` the file ``source``, atomically: a hard link where the file system allows
    (no second write of a file that may be as big as a checkpoint), else a copy.

    Only for files that are replaced by a rename, never rewritten in place (everything written
    here), so the two names cannot diverge. A link is not fsynced or chmodded: it is the source's
    own file, already on disk, and its permissions are its owner's (another user's run may be the
    source); the folder is fsynced either way.
    """
    def link_or_copy(tmp: Path) -> bool:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, tmp)
            return True
        return False

    return _replace_with(target, link_or_copy)


def _replace_with(path: str | os.PathLike[str], make: Callable[[Path], bool]) -> Path:
    """``make(tmp_path)`` produces the file (True: new data, to be fsynced and given plain
    permissions), then it is moved over ``path``; see :func:`atomic_write_with`."""
    # Absolute, so a library that expands "~" itself (pandas, matplotlib) writes the file we mean.
    target = Path(path).absolute()
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        if make(tmp):
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause = _os_error(exc, NO_SPACE | NOT_WRITABLE)
        if cause is not None and cause.errno in NO_SPACE:
            raise DiskFullError(
                f"cannot write {target}: {os.strerror(cause.errno)}. Free space on that disk (or raise "
                "the file-size limit) and re-run the same command: everything saved before is intact"
            ) from exc
        if cause is not None:
            raise UserError(f"cannot write {target}: {os.strerror(cause.errno)}. Make its folder writable "
                            "and re-run the same command: everything saved before is intact") from exc
        raise
    _fsync_dir(target.parent)
    return target


def _os_error(exc: BaseException, codes: frozenset[int]) -> OSError | None:
    """The OSError with one of ``codes`` behind ``exc`` (itself, or in its cause/context chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in codes:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable diffs between runs)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def is_temp_file(path: Path) -> bool:
    """A temporary file of :func:`atomic_write_with` (left behind only by a killed process)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()


def remove_temp_files(folder: Path, targets: str | None = None) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``: all of them, or only those
    of the files named by the glob ``targets`` (e.g. ``"checkpoint_*.pt"``). Only safe while no
    other process writes them: the run directory lock (src.rundirs.lock) guarantees that."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.iterdir() if targets is None else folder.glob(f".{targets}.*{TEMP_SUFFIX}")
    stale = [path for path in candidates if is_temp_file(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
