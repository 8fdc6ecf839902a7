"""URL sources: ``http(s)://`` checkpoints, downloaded once into the torch hub cache, verified.

Where a URL's file is cached, which hashes its URL promises and how a cached
file is held to them is :mod:`~weightsurgery.sources.url_cache`'s
(:func:`cache_path`, :func:`expected_hashes` are re-exported here); this
module downloads into that cache and opens what is there.

**Verification.** :func:`download_to_cache` has :func:`~weightsurgery.sources._download.fetch`
write into a private folder beside the cache (connect and read timeouts,
retries with backoff, a transfer cut short refused), then checks the
**full sha256** against the fragment and the name, and that the file
**opens as a checkpoint** (an HTML error page served as 200 does not). Only
then is it renamed into the cache, with a mark beside it
(:func:`~weightsurgery.sources.url_cache.write_mark`). A cached file is held
to its hashes again (:func:`~weightsurgery.sources.url_cache.verify_cached`)
and evicted if it fails. A cached file that fails to open is evicted too
(:mod:`~weightsurgery.sources._evict`), so the next run downloads it again.

Offline (``HF_HUB_OFFLINE=1``, the switch huggingface_hub reads) a cached file
is used and an uncached one fails at once with :class:`OfflineSourceError`,
naming where to put the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from weightsurgery.errors import CorruptCheckpointError, IntegrityError, OfflineSourceError, SourceError
from weightsurgery.sources._download import DownloadPolicy, fetch
from weightsurgery.sources._evict import open_or_evict
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind
from weightsurgery.sources.url_cache import (
    cache_path,
    expected_hashes,
    remove_entry,
    strip_fragment,
    verify_cached,
    write_mark,
)

__all__ = [
    "Download",
    "DownloadPolicy",
    "cache_path",
    "download_to_cache",
    "expected_hashes",
    "open_cached",
    "open_url",
]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Download:
    """A URL's file in the cache.

    Attributes:
        path: the cached file.
        sha256: the full hash, when it was checked against an expectation.
        downloaded: ``False`` when the file was already cached.
        url: the URL it came from.
    """

    path: Path
    sha256: str | None
    downloaded: bool
    url: str = ""


def download_to_cache(
    url: str,
    *,
    quiet: bool = False,
    offline: bool | None = None,
    key: str | None = None,
    weights_only: bool = True,
    torch_hub_names: bool = False,
    policy: DownloadPolicy | None = None,
) -> Download:
    """Fetch ``url`` into the torch hub cache, verified, or reuse the cached copy.

    Args:
        url: an ``http://`` or ``https://`` URL; a ``#sha256=<hex>`` fragment pins its content.
        quiet: no progress bar.
        offline: use only the cache; ``None`` follows ``HF_HUB_OFFLINE``.
        key: passed to the open that proves a fresh download is a whole checkpoint.
        weights_only: passed to that open.
        torch_hub_names: see :func:`expected_hashes` (torchvision's weights).
        policy: timeouts and retries; ``None`` reads :meth:`DownloadPolicy.from_env`.

    Returns:
        Where the file is and which hash was verified.

    Raises:
        IntegrityError: the content does not match the promised hash; nothing was cached
            (a cached copy that does not match is evicted).
        CorruptCheckpointError: the transfer was cut short or the file is not a checkpoint; nothing was cached.
        SourceNotFoundError: the server answered 404 or 410.
        SourceError: the server answered another HTTP error.
        OfflineSourceError: offline, or the server is unreachable or stalls, and the file is not cached.

    Example:
        >>> download_to_cache("https://example.com/w.pth", offline=True)  # doctest: +SKIP
    """
    full, prefix = expected_hashes(url, torch_hub_names=torch_hub_names)
    cached = cache_path(url, torch_hub_names=torch_hub_names)
    if cached.is_file():
        digest = verify_cached(url, cached, full, prefix)
        logger.debug("using cached %s for %s", cached, url)
        return Download(cached, digest, downloaded=False, url=url)
    if _offline(offline):
        raise OfflineSourceError(
            f"{url} is not cached (looked for {cached}) and offline mode is on (HF_HUB_OFFLINE=1); "
            "run once with the network to fetch it, or download the file and place it at that path",
            source=url,
        )
    policy = policy or DownloadPolicy.from_env()
    with _private_dir(cached.parent) as scratch:
        tmp = scratch / cached.name
        logger.info("downloading %s to %s", url, cached)
        digest = fetch(strip_fragment(url), tmp, entry=cached, policy=policy, quiet=quiet)
        _check(url, cached, digest, full, prefix)
        _prove_complete(url, cached, tmp, key=key, weights_only=weights_only)
        os.replace(tmp, cached)
    write_mark(cached, digest, url)
    return Download(cached, digest if (full or prefix) else None, downloaded=True, url=url)


def open_cached(download: Download, *, key: str | None, weights_only: bool) -> Checkpoint:
    """Open a cached download; a file found corrupt is evicted, so the next run downloads it again.

    Args:
        download: what :func:`download_to_cache` returned.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.

    Returns:
        The checkpoint, with the origin of the file itself (callers stamp their own).

    Raises:
        CorruptCheckpointError: the cached file is broken; it was evicted.
        UnsafeCheckpointError: a pickle needs code; it stays in the cache, and the message says where.
    """
    return open_or_evict(
        lambda: _open_files(download.path, key=key, weights_only=weights_only),
        [download.path],
        evict=remove_entry,
        came_from=download.url or "a download",
    )


def open_url(url: str, *, key: str | None, weights_only: bool, quiet: bool) -> Checkpoint:
    """Resolve an ``http(s)://`` URL to a lazy :class:`Checkpoint`.

    Args:
        url: the URL; ``#sha256=<hex>`` or a ``name-<sha256 prefix>.ext`` file name is verified.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        quiet: no progress bar.

    Returns:
        A checkpoint whose ``origin`` is ``url`` with the verified ``sha256``.

    Raises:
        IntegrityError: the download does not match its hash; nothing was cached.
        SourceNotFoundError: the server has no such file.
        OfflineSourceError: offline, unreachable or stalled, and not cached.

    Example:
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve("https://download.pytorch.org/models/resnet18-f37072fd.pth")  # doctest: +SKIP
        >>> ckpt.origin.sha256[:8]  # doctest: +SKIP
        'f37072fd'
    """
    download = download_to_cache(url, quiet=quiet, key=key, weights_only=weights_only)
    ckpt = open_cached(download, key=key, weights_only=weights_only)
    ckpt.origin = dataclasses.replace(
        ckpt.origin,
        kind=SourceKind.URL,
        location=url,
        sha256=download.sha256,
        details={**ckpt.origin.details, "format": ckpt.origin.kind.value, "downloaded": download.downloaded},
    )
    return ckpt


def _open_files(path: Path, *, key: str | None = None, weights_only: bool = True) -> Checkpoint:
    from weightsurgery.sources import files

    return files.open_path(path, key=key, weights_only=weights_only)


def _prove_complete(url: str, dest: Path, tmp: Path, *, key: str | None, weights_only: bool) -> None:
    """Open the fresh download: an error page, or anything else that is not a checkpoint, fails here."""
    try:
        _open_files(tmp, key=key, weights_only=weights_only).close()
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            f"the download of {url} is not a whole checkpoint (the transfer was cut short, or the server sent "
            f"something else: {exc}); nothing was cached at {dest}; try again, or check the URL",
            source=url,
        ) from exc
    except SourceError:
        pass  # the file is whole; the caller's own open reports what is wrong with the options


def _check(url: str, dest: Path, digest: str, full: str | None, prefix: str | None) -> None:
    wrong = [expected for expected in (full, prefix) if expected and not digest.startswith(expected)]
    if wrong:
        raise IntegrityError(
            f"sha256 mismatch for {url}: expected {wrong[0]}, got {digest}; nothing was cached at {dest}; "
            "check the URL and its hash, or whether the server changed the file",
            source=url,
        )


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _private_dir(cache_dir: Path) -> Iterator[Path]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".weightsurgery-download-", dir=cache_dir))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
