"""Opening a cached download: what is found corrupt leaves the cache, what is refused says where it is.

A file the cache holds is opened through :func:`open_or_evict`:

* a :class:`CorruptCheckpointError` (an HTML page served as 200, a file cut
  short, a file changed on disk) **evicts** the broken file, so that the
  next run downloads it again instead of failing the same way forever. That
  holds when the file is opened, and when a tensor is read from it later,
  at apply time (a file truncated after it was opened);
* an :class:`UnsafeCheckpointError` keeps the file, because it is whole and
  is exactly what its source serves: downloading it again would bring the
  same bytes. The error says where it is, so it can be deleted, or opened
  with ``weights_only=False`` by someone who trusts its source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from weightsurgery.errors import CorruptCheckpointError, UnsafeCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["open_or_evict"]

logger = logging.getLogger(__name__)


def open_or_evict(
    open_: Callable[[], Checkpoint], files: Sequence[Path], *, evict: Callable[[Path], None], came_from: str
) -> Checkpoint:
    """Run ``open_``; on corruption evict the broken file (or all of ``files``) and re-raise, saying so.

    Args:
        open_: opens the checkpoint from the cached ``files``.
        files: the cached files the checkpoint is read from.
        evict: removes one cached file (and whatever the cache keeps beside it).
        came_from: where the files were downloaded from, for the message.

    Returns:
        What ``open_`` returned, its reads guarded the same way.

    Raises:
        CorruptCheckpointError: the files are broken; the one named (or all) left the cache.
        UnsafeCheckpointError: a pickle needs code; it stays in the cache, and the message says where.

    Example:
        >>> import tempfile, pathlib
        >>> from weightsurgery.sources.files import open_path
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> _ = bad.write_bytes(b"<html>not found</html>")
        >>> open_or_evict(lambda: open_path(bad, key=None, weights_only=True), [bad],
        ...               evict=pathlib.Path.unlink, came_from="https://example.com/w.safetensors")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.CorruptCheckpointError: ...: removed ... from the cache, so the next run downloads it again
        >>> bad.exists()
        False
    """
    try:
        ckpt = open_()
    except CorruptCheckpointError as exc:
        raise _evicted(exc, files, evict=evict, came_from=came_from) from exc
    except UnsafeCheckpointError as exc:
        where = exc.source or str(files[0])
        raise UnsafeCheckpointError(
            f"{exc}. It came from {came_from} and stays in the cache at {where} (downloading it again would "
            "bring the same bytes): delete it if you do not trust its source",
            source=exc.source,
        ) from exc

    def load(key: str) -> torch.Tensor:
        try:
            return ckpt.load(key)
        except CorruptCheckpointError as exc:
            raise _evicted(exc, files, evict=evict, came_from=came_from) from exc

    return Checkpoint(ckpt.metas, load, ckpt.origin, metadata=ckpt.metadata, closer=ckpt.close, owned=ckpt.owned)


def _evicted(
    exc: CorruptCheckpointError, files: Sequence[Path], *, evict: Callable[[Path], None], came_from: str
) -> CorruptCheckpointError:
    """Evict the file ``exc`` names (or all of ``files``); the error to raise instead, saying so."""
    named = [path for path in files if exc.source in (str(path), os.path.realpath(path))]
    broken = named or list(files)
    for path in broken:
        logger.warning("evicting %s from the cache: %s", path, exc)
        evict(path)
    return CorruptCheckpointError(
        f"{exc}; it came from {came_from}: removed {', '.join(map(str, broken))} from the cache, "
        "so the next run downloads it again",
        source=exc.source,
    )
