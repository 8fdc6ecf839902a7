"""The filesystem calls under atomic writes: the no-replace rename, by renameat2 and by its hard-link fallback."""

from __future__ import annotations

import os

import pytest

from weightsurgery._fsops import link_noreplace, rename_noreplace


@pytest.mark.parametrize("rename", [rename_noreplace, link_noreplace])
def test_the_no_replace_rename_refuses_files_and_dangling_symlinks(tmp_path, rename) -> None:
    src, dest, link = tmp_path / "src", tmp_path / "dest", tmp_path / "link"
    src.write_text("new")
    dest.write_text("old")
    link.symlink_to(tmp_path / "nowhere")
    for existing in (dest, link):
        with pytest.raises(FileExistsError):
            rename(src, existing)
    assert dest.read_text() == "old" and os.readlink(link) == str(tmp_path / "nowhere")
    rename(src, tmp_path / "fresh")
    assert (tmp_path / "fresh").read_text() == "new" and not src.exists()
