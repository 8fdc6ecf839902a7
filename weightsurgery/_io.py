"""Atomic, no-clobber file writes: every output weightsurgery writes goes through here.

Each file is written to a temporary file beside it
(``.weightsurgery.<name>.<random>.tmp``), fsynced, and renamed into place
only when every file of the group is complete. So a destination is either
its old content or the complete new file, never a half-written one, and the
files of one command (``-o`` and ``--report-json``) appear together or not
at all.

* **No clobbering.** Without ``overwrite`` the final rename itself refuses
  an existing destination (``renameat2(RENAME_NOREPLACE)`` on Linux, else a
  hard link, which fails on an existing name, then an unlink; see
  :mod:`weightsurgery._fsops`). A file that
  appears at the destination while the work runs, a dangling symlink, or
  another run racing for the same new path are refused, not replaced.
* **No leaks.** The temporary name is chosen before the file is created and
  registered for removal first, so an exception or Ctrl-C at any point
  removes it. A run killed outright (SIGKILL, a power cut) cannot clean up:
  the next write into the same folder removes this user's temporary files
  that have not changed for :data:`STALE_AFTER` seconds.
* **No new folders.** A destination whose folder does not exist is refused,
  as ``open()`` and ``torch.save`` refuse it: a mistyped folder is not
  created silently.

Creating a temporary file raises the audit event ``weightsurgery.tempfile``
with its path (as :func:`tempfile.mkstemp` raises ``tempfile.mkstemp``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from weightsurgery._fsops import fsync, mode_for, rename_noreplace
from weightsurgery.errors import OutputExistsError, OutputWriteError, WeightSurgeryError

__all__ = [
    "STALE_AFTER",
    "TEMP_PREFIX",
    "AtomicOutputs",
    "atomic_path",
    "atomic_write_text",
    "check_destination",
    "remove_stale_temps",
]

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".weightsurgery."
"""How every temporary file written here begins (it ends in ``.tmp``)."""

STALE_AFTER = 3600.0
"""Seconds without a change after which a temporary file of ours counts as left by a killed run."""

_TEMP_SUFFIX = ".tmp"
_NAME_CHARS = 100  # of the destination's name kept in the temporary name (names stay under 255 bytes)


def check_destination(dest: str | os.PathLike[str], *, overwrite: bool, flag: str = "overwrite=True") -> Path:
    """Refuse a destination that cannot be written, before any work is done.

    Args:
        dest: the file to write.
        overwrite: an existing file may be replaced.
        flag: how messages name the way to allow replacing (``--force`` on the command line).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``dest`` exists (a dangling symlink included) and ``overwrite`` is false.
        OutputWriteError: ``dest`` is a folder, or its folder does not exist.

    Example:
        >>> check_destination("no/such/folder/out.json", overwrite=False)
        Traceback (most recent call last):
        ...
        weightsurgery.errors.OutputWriteError: cannot write no/such/folder/out.json: its folder no/such/folder does not exist; create it first (mkdir -p no/such/folder)
    """
    dest = Path(dest)
    if dest.is_dir():
        raise OutputWriteError(f"output {dest} is a folder; give a file name, e.g. {dest / dest.name}", path=dest)
    folder = dest.parent
    if folder.exists() and not folder.is_dir():
        raise OutputWriteError(f"cannot write {dest}: {folder} is a file, not a folder", path=dest)
    if not folder.is_dir():
        raise OutputWriteError(
            f"cannot write {dest}: its folder {folder} does not exist; create it first (mkdir -p {folder})", path=dest
        )
    if not overwrite and os.path.lexists(dest):
        raise OutputExistsError(f"output {dest} already exists; pass {flag} to replace it", path=dest)
    return dest


class AtomicOutputs:
    """A group of files written together: all of them appear, or none.

    :meth:`stage` gives a temporary path for each destination; write the file
    there. Leaving the ``with`` block normally renames every file into place
    (rolling back the ones already placed if a later one fails); leaving it
    with an exception, an interrupt included, removes every temporary file and
    leaves the destinations as they were.

    Args:
        overwrite: replace existing destinations; without it an existing one,
            even one that appears while the files are written, is refused.
        flag: how messages name the way to allow replacing (``--force`` on the command line).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with AtomicOutputs() as outputs:
        ...     _ = outputs.stage(d / "weights.txt").write_text("w")
        ...     outputs.write_text(d / "report.json", "{}")
        >>> sorted(p.name for p in d.iterdir())
        ['report.json', 'weights.txt']
        >>> with AtomicOutputs() as outputs:
        ...     outputs.write_text(d / "new.json", "{}")
        ...     outputs.write_text(d / "report.json", "{}")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.OutputExistsError: output ... already exists; pass overwrite=True to replace it
        >>> sorted(p.name for p in d.iterdir())
        ['report.json', 'weights.txt']
    """

    def __init__(self, *, overwrite: bool = False, flag: str = "overwrite=True") -> None:
        self.overwrite = overwrite
        self.flag = flag
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination), in the order staged
        self._swept: set[Path] = set()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._commit()
        finally:
            self._discard()

    def stage(self, dest: str | os.PathLike[str]) -> Path:
        """Create and return an empty temporary file beside ``dest``; it becomes ``dest`` at the end of the block.

        Raises:
            OutputExistsError: ``dest`` exists and ``overwrite`` is false.
            OutputWriteError: ``dest`` is a folder, its folder does not exist, or
                the temporary file cannot be created there.
        """
        dest = check_destination(dest, overwrite=self.overwrite, flag=self.flag)
        if any(d == dest for _, d in self._staged):
            raise ValueError(f"{dest} is staged twice in one group of outputs")
        self._sweep(dest.parent)
        while True:
            tmp = dest.parent / f"{TEMP_PREFIX}{dest.name[:_NAME_CHARS]}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"
            self._staged.append((tmp, dest))  # registered before it exists: an interrupt from here on removes it
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._staged.pop()  # another process's file of the same random name: not ours to remove
                continue
            except OSError as exc:
                raise _write_error(dest, exc) from exc
            try:
                sys.audit("weightsurgery.tempfile", str(tmp))
            finally:
                os.close(fd)
            return tmp

    def write_text(self, dest: str | os.PathLike[str], text: str) -> None:
        """Stage ``dest`` and write ``text`` (UTF-8) to its temporary file."""
        tmp = self.stage(dest)
        with self.writing(dest):
            tmp.write_text(text, encoding="utf-8")

    @contextlib.contextmanager
    def writing(self, dest: str | os.PathLike[str]) -> Iterator[None]:
        """Turn an :class:`OSError` raised while writing ``dest``'s temporary file into :class:`OutputWriteError`."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, WeightSurgeryError):
                raise
            raise _write_error(Path(dest), exc) from exc

    def _commit(self) -> None:
        for tmp, dest in self._staged:
            with self.writing(dest):
                fsync(tmp)
                os.chmod(tmp, mode_for(dest))  # a fresh temporary file is 0600; give the user's usual mode
        placed: list[tuple[Path, Path | None]] = []  # (destination, backup of the file it replaced)
        try:
            for tmp, dest in self._staged:
                placed.append((dest, self._place(tmp, dest)))
        except BaseException:
            for dest, backup in reversed(placed):
                _restore(dest, backup)
            raise
        for folder in {dest.parent for _, dest in self._staged}:
            fsync(folder)
        for _, backup in placed:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()

    def _place(self, tmp: Path, dest: Path) -> Path | None:
        """Rename ``tmp`` to ``dest``; return a hard link to the file it replaced, if any (for a rollback)."""
        if not self.overwrite:
            try:
                rename_noreplace(tmp, dest)
            except FileExistsError as exc:
                raise OutputExistsError(
                    f"output {dest} appeared while this ran; it was left as it is and nothing was written. "
                    f"Pass {self.flag} to replace it",
                    path=dest,
                ) from exc
            except OSError as exc:
                raise _write_error(dest, exc) from exc
            return None
        backup = None
        if os.path.lexists(dest):
            backup = tmp.with_name(f"{TEMP_PREFIX}{dest.name[:_NAME_CHARS]}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")
            try:
                os.link(dest, backup, follow_symlinks=False)
            except OSError:
                backup = None  # no hard links here: a rollback cannot bring the old file back
        try:
            with self.writing(dest):
                os.replace(tmp, dest)
        except BaseException:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
            raise
        return backup

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._staged.clear()

    def _sweep(self, folder: Path) -> None:
        """Remove this user's temporary files in ``folder`` that no change has touched for :data:`STALE_AFTER`."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        remove_stale_temps(folder)


def remove_stale_temps(folder: str | os.PathLike[str], *, older_than: float = STALE_AFTER) -> list[Path]:
    """Remove the temporary files a killed run left in ``folder``: ours, this user's, unchanged for ``older_than`` s.

    Returns:
        The files removed.
    """
    now = time.time()
    removed = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX)):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            if now - info.st_mtime < older_than:
                continue  # perhaps a run still writing it
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
        logger.info("removed %s, a temporary file left by an interrupted run", entry.path)
    return removed


@contextlib.contextmanager
def atomic_path(
    dest: str | os.PathLike[str], *, overwrite: bool = True, flag: str = "overwrite=True"
) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``.

    One file of :class:`AtomicOutputs`: ``dest`` is either the old file or the
    complete new one, never a half-written file. On any exception the
    temporary file is removed and ``dest`` is left as it was.

    Args:
        dest: the file to write; its folder must exist.
        overwrite: replace an existing ``dest`` (the default, as ``open(dest, "w")``).
            Without it an existing ``dest`` is refused, atomically at the rename.
        flag: how messages name the way to allow replacing.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "out.txt") as tmp:
        ...     _ = tmp.write_text("hi")
        >>> (d / "out.txt").read_text()
        'hi'
    """
    with AtomicOutputs(overwrite=overwrite, flag=flag) as outputs:
        yield outputs.stage(dest)


def atomic_write_text(dest: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` to ``dest`` atomically (see :func:`atomic_path`)."""
    with AtomicOutputs(overwrite=overwrite) as outputs:
        outputs.write_text(dest, text)


def _write_error(dest: Path, exc: OSError) -> OutputWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputWriteError(
        f"could not write {dest} ({reason}); it was left as it was. "
        "Check the free disk space, the file-size limit (ulimit -f) and the folder's permissions",
        path=dest,
    )


def _restore(dest: Path, backup: Path | None) -> None:
    """Undo one placed file: bring the replaced file back, or remove a new one."""
    with contextlib.suppress(OSError):
        if backup is not None:
            os.replace(backup, dest)
        else:
            dest.unlink()
