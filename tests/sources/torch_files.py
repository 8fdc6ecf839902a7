"""Helpers that rewrite real torch zip files for the hostile-input and fuzz tests."""

from __future__ import annotations

import zipfile
from pathlib import Path


def rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a torch zip record by record, replacing the records named (by their name after the archive folder)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, replace.get(inner, zin.read(info.filename)))
    return dst


def data_offset(path: Path, inner: str) -> int:
    """Where the bytes of a record begin in the file."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/" + inner))
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len
