"""Atomic writes: all or nothing, no temp files left, the usual file mode."""

from __future__ import annotations

import os
import stat

import pytest

from weightsurgery._io import atomic_path, atomic_write_text


def test_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path) -> None:
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_new_files_get_the_umask_mode_and_existing_files_keep_theirs(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("a")
        kept.chmod(0o600)
        atomic_write_text(kept, "b")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() == "b"
    finally:
        os.umask(umask)
