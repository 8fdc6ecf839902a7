"""The filesystem calls atomic writes rest on: a rename that never replaces, fsync, a new file's mode.

:mod:`weightsurgery._io` builds its all-or-nothing groups of outputs on
these; each does one thing the standard library does not offer as such.

* :func:`rename_noreplace` renames atomically and refuses an existing
  destination, a dangling symlink included: ``renameat2(RENAME_NOREPLACE)``
  on Linux, else :func:`link_noreplace` (a hard link, which ``link`` refuses
  over an existing name, then an unlink).
* :func:`fsync` flushes a file, or a folder's entries, to disk.
* :func:`mode_for` is the mode a written file should have: an existing
  file's own, or ``0o666`` less the umask, as ``open()`` gives.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync", "link_noreplace", "mode_for", "rename_noreplace"]


def mode_for(dest: Path) -> int:
    """An existing file keeps its mode; a new one gets ``0o666`` less the umask, as ``open()`` would."""
    try:
        return stat.S_IMODE(dest.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders are skipped where they cannot be opened)."""
    if path.is_dir() and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists, atomically.

    ``renameat2(RENAME_NOREPLACE)`` where the C library and the filesystem
    have it; otherwise a hard link (``link`` refuses an existing name) and an
    unlink; on Windows ``os.rename``, which never replaces. A filesystem
    without hard links gets an exclusively created placeholder, replaced.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        code = _errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    if os.name == "nt":
        os.rename(src, dst)
        return
    link_noreplace(src, dst)


def link_noreplace(src: Path, dst: Path) -> None:
    """The portable no-replace rename: hard-link ``src`` as ``dst`` (refused if ``dst`` exists), unlink ``src``."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # the name is ours from here on
        os.replace(src, dst)
        return
    os.unlink(src)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` through ctypes, or ``None`` off Linux or on a C library without it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()
