"""Atomic file writes: a crash mid-write never leaves a partial file and never damages an existing one."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def _link_fd(fd: int, target: Path) -> None:
    """Give the anonymous file ``fd`` a name (linkat with AT_SYMLINK_FOLLOW; os.link does not follow)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(target), at_symlink_follow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write, fsync, then rename into place.

    On Linux the data goes to an anonymous ``O_TMPFILE`` inode that only gets a name once it is
    complete, so a process killed mid-write leaves nothing behind; elsewhere a named temporary file
    in the same directory is removed on any exception.
    """
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)  # type: ignore[attr-defined]
        anonymous = True
    except (AttributeError, OSError):
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        anonymous = False
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
            if anonymous:
                tmp.unlink(missing_ok=True)
                _link_fd(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
