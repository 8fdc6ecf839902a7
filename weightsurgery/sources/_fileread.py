"""Positioned reads into memory a tensor owns: no memory map, so a file that shrinks raises, never SIGBUS."""

from __future__ import annotations

import os

__all__ = ["pread_into"]


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` with the bytes of ``fd`` from ``offset``; return how many were read.

    Fewer than ``len(view)`` means the file ended first (it was truncated).

    Example:
        >>> import os, tempfile
        >>> fd, name = tempfile.mkstemp()
        >>> _ = os.write(fd, b"abcdef")
        >>> buf = bytearray(4)
        >>> pread_into(fd, memoryview(buf), 4), bytes(buf[:2])
        (2, b'ef')
        >>> os.close(fd); os.unlink(name)
    """
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done
