"""Positioned reads into memory a tensor owns: no memory map, so a file that shrinks raises, never SIGBUS.

A large destination is faulted in before the read, in one ``madvise(MADV_POPULATE_WRITE)``
(Linux 5.14+), instead of one page fault per 4 KiB inside the kernel's copy: on fresh
memory that is most of the difference between a ``pread`` and a ``memcpy``
(``benchmarks/bench_distributed.py``). Where the call is missing (another OS, an older
kernel) the read is the same, without it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["POPULATE_FROM", "populate", "pread_into"]

POPULATE_FROM = 1 << 20  # bytes; below this, the faults cost less than the system call
_MADV_POPULATE_WRITE = 23
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_madvise = None  # the libc function, once looked up; False where there is none


def populate(view: memoryview) -> None:
    """Fault in the pages of ``view`` (writable memory) now, in one system call; best effort.

    Example:
        >>> buf = bytearray(3 << 20)
        >>> populate(memoryview(buf))  # nothing to see: the same bytes, faulted in sooner
        >>> bytes(buf[:2])
        b'\\x00\\x00'
    """
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):
                fn = None
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
                _madvise = fn
    if not _madvise:
        return
    import ctypes

    try:
        start = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or empty: nothing to fault in for writing
        return
    aligned = start - start % _PAGE
    if _madvise(aligned, start + len(view) - aligned, _MADV_POPULATE_WRITE) != 0:
        _madvise = False  # EINVAL: a kernel without it; do not ask again


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
    if len(view) >= POPULATE_FROM:
        populate(view)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done
