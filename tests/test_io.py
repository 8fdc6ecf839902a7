"""Atomic writes: all or nothing, never clobbering, no temp files left, the usual file mode, no new folders."""

from __future__ import annotations

import os
import stat
import time

import pytest

from weightsurgery._io import STALE_AFTER, TEMP_PREFIX, AtomicOutputs, atomic_path, atomic_write_text
from weightsurgery.errors import OutputExistsError, OutputWriteError


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


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_without_overwrite_a_file_that_appears_before_the_rename_is_kept(tmp_path) -> None:
    dest = tmp_path / "out.json"
    with pytest.raises(OutputExistsError, match=r"out.json appeared while this ran; it was left as it is"):
        with AtomicOutputs() as outputs:
            outputs.write_text(dest, "ours")
            dest.write_text("theirs")  # another process, between the early check and the rename
    assert dest.read_text() == "theirs" and _names(tmp_path) == ["out.json"]


def test_a_group_is_all_or_nothing_and_a_later_failure_brings_the_replaced_files_back(tmp_path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    with pytest.raises(OutputWriteError, match=r"could not write .*b.txt"):
        with AtomicOutputs(overwrite=True) as outputs:
            outputs.write_text(first, "new a")
            outputs.write_text(second, "new b")
            second.mkdir()  # the second rename now fails: a folder holding a file cannot be replaced
            (second / "keep").touch()
    assert first.read_text() == "old a"  # replaced, then restored from its hard link
    assert _names(tmp_path) == ["a.txt", "b.txt"] and _names(second) == ["keep"]


def test_an_interrupt_anywhere_in_the_group_removes_every_temporary_file(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt), AtomicOutputs() as outputs:
        outputs.write_text(tmp_path / "a.txt", "a")
        outputs.stage(tmp_path / "b.txt")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_stale_temporary_files_of_ours_are_removed_and_nothing_else(tmp_path) -> None:
    old = time.time() - STALE_AFTER - 60
    stale, fresh = tmp_path / f"{TEMP_PREFIX}a.pth.0123.tmp", tmp_path / f"{TEMP_PREFIX}b.pth.4567.tmp"
    other, link = tmp_path / ".other.pth.0123.tmp", tmp_path / f"{TEMP_PREFIX}c.pth.89ab.tmp"
    for path in (stale, fresh, other):
        path.write_text("x")
    link.symlink_to(other)
    for path in (stale, other, link):
        os.utime(path, (old, old), follow_symlinks=False)
    atomic_write_text(tmp_path / "new.txt", "y")  # a write into the folder sweeps it
    assert not stale.exists()
    assert fresh.exists() and other.exists() and link.is_symlink()


def test_a_missing_folder_is_refused_and_not_created(tmp_path) -> None:
    with pytest.raises(OutputWriteError, match=r"its folder .*no/such does not exist; create it first"):
        atomic_write_text(tmp_path / "no" / "such" / "out.json", "{}")
    assert _names(tmp_path) == []
