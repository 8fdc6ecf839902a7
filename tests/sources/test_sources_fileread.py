"""Positioned reads (``sources/_fileread.py``): the bytes, a short file, and the pages faulted in up front."""

from __future__ import annotations

import mmap
import os
import sys

import pytest

from weightsurgery.sources import _fileread
from weightsurgery.sources._fileread import POPULATE_FROM, populate, pread_into


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@pytest.fixture
def data_file(tmp_path):
    payload = os.urandom(3 * POPULATE_FROM + 123)
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    yield fd, payload
    os.close(fd)


def test_large_read_is_byte_exact(data_file):
    fd, payload = data_file
    buf = bytearray(2 * POPULATE_FROM + 7)  # over the threshold: faulted in first, then read
    assert pread_into(fd, memoryview(buf), 99) == len(buf)
    assert bytes(buf) == payload[99 : 99 + len(buf)]


def test_read_past_the_end_says_how_much(data_file):
    fd, payload = data_file
    buf = bytearray(POPULATE_FROM * 2)
    offset = len(payload) - 10
    assert pread_into(fd, memoryview(buf), offset) == 10
    assert bytes(buf[:10]) == payload[-10:]


def test_read_only_or_empty_views_are_left_alone():
    populate(memoryview(b"x" * (2 * POPULATE_FROM)))  # read-only: no error, nothing to do
    populate(memoryview(bytearray()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE and /proc are Linux's")
def test_populate_faults_in_the_pages_at_once():
    size = 64 * POPULATE_FROM
    region = mmap.mmap(-1, size)  # anonymous memory: no page is resident until it is touched
    try:
        before = _rss()
        populate(memoryview(region))
        grew = _rss() - before
        if _kernel() < (5, 14):
            assert _fileread._madvise is False  # no MADV_POPULATE_WRITE: asked once, then never again
            pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14): populate is a no-op here")
        assert grew >= 0.9 * size, f"resident memory grew by {grew} bytes, expected about {size}"
    finally:
        region.close()
