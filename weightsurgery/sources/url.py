"""URL sources: ``http(s)://`` checkpoints, downloaded once into the torch hub cache.

Downloads land in ``torch.hub.get_dir()/checkpoints/<basename>``, the folder
``torch.hub.load_state_dict_from_url`` and torchvision use, so a file fetched
by either is reused by the other.

The cache is never poisoned. :func:`download_to_cache` has
``torch.hub.download_url_to_file`` write into a private folder beside the
cache entry (torch itself streams into ``<dst>.<uuid>.partial`` and moves it
to ``dst`` only after the transfer ends, deleting the partial on any
exception). Then it checks what torch does not:

* the **full sha256**, against a ``#sha256=<hex>`` fragment and/or the
  ``name-<sha256 prefix>.ext`` file-name convention (``torch.hub``'s
  ``check_hash``; we require at least 8 hex digits, as torch documents, so
  ``efficientnet-b0.pth`` is not read as a hash);
* that the file **opens as a checkpoint**. ``download_url_to_file`` accepts a
  connection closed before ``Content-Length`` bytes arrived as a complete
  download; a truncated zip pickle or safetensors file fails to open, so it
  is caught here.

Only then is the file renamed into the cache. On any failure the private
folder is removed and nothing is cached.

Offline (``HF_HUB_OFFLINE=1``, the switch huggingface_hub reads) a cached file
is used and an uncached one fails at once with :class:`OfflineSourceError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch.hub

from weightsurgery.errors import (
    CorruptCheckpointError,
    IntegrityError,
    OfflineSourceError,
    SourceError,
    SourceNotFoundError,
    SourceSpecError,
)
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

__all__ = ["Download", "download_to_cache", "expected_hashes", "open_url"]

logger = logging.getLogger(__name__)

_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_FRAGMENT_HASH = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Download:
    """A URL's file in the cache.

    Attributes:
        path: the cached file.
        sha256: the full hash, when it was checked against an expectation.
        downloaded: ``False`` when the file was already cached.
    """

    path: Path
    sha256: str | None
    downloaded: bool


def expected_hashes(url: str) -> tuple[str | None, str | None]:
    """The hashes a URL promises: ``(full sha256 from #sha256=, prefix from the file name)``.

    Args:
        url: the URL, possibly with a ``#sha256=<64 hex>`` fragment.

    Returns:
        The full hash (lowercase) or ``None``, and the file-name prefix or ``None``.

    Raises:
        SourceSpecError: the fragment is present but is not ``sha256=`` and 64 hex digits.

    Example:
        >>> expected_hashes("https://example.com/resnet18-f37072fd.pth")
        (None, 'f37072fd')
        >>> expected_hashes("https://example.com/w.safetensors#sha256=" + "a" * 64)[0][:4]
        'aaaa'
    """
    parts = urlsplit(url)
    full = None
    if parts.fragment:
        match = _FRAGMENT_HASH.match(parts.fragment)
        if match is None:
            raise SourceSpecError(
                f"cannot read the hash in {url!r}: the fragment must be '#sha256=' followed by 64 hex digits",
                source=url,
            )
        full = match.group(1).lower()
    name_match = _NAME_HASH.search(_basename(url))
    return full, (name_match.group(1) if name_match else None)


def download_to_cache(
    url: str,
    *,
    quiet: bool = False,
    offline: bool | None = None,
    key: str | None = None,
    weights_only: bool = True,
) -> Download:
    """Fetch ``url`` into the torch hub cache, verified, or reuse the cached copy.

    Args:
        url: an ``http://`` or ``https://`` URL; a ``#sha256=<hex>`` fragment pins its content.
        quiet: no progress bar.
        offline: use only the cache; ``None`` follows ``HF_HUB_OFFLINE``.
        key: passed to the open that proves a fresh download is a whole checkpoint.
        weights_only: passed to that open.

    Returns:
        Where the file is and which hash was verified.

    Raises:
        IntegrityError: the content does not match the promised hash; nothing was cached.
        CorruptCheckpointError: the transfer was cut short or the file is not a checkpoint; nothing was cached.
        SourceNotFoundError: the server answered 404 or 410.
        SourceError: the server answered another HTTP error.
        OfflineSourceError: offline, or the server is unreachable, and the file is not cached.

    Example:
        >>> download_to_cache("https://example.com/w.pth", offline=True)  # doctest: +SKIP
    """
    full, prefix = expected_hashes(url)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / _basename(url)
    if cached.is_file():
        digest = None
        if full is not None:  # the user pinned the content: hold the cache to it too
            digest = _sha256(cached)
            _check(url, cached, digest, full, prefix, cached_copy=True)
        logger.debug("using cached %s for %s", cached, url)
        return Download(cached, digest, downloaded=False)
    if _offline(offline):
        raise OfflineSourceError(
            f"{url} is not cached at {cached} and offline mode is on (HF_HUB_OFFLINE=1); "
            "run once with the network to fetch it, or download the file and place it at that path",
            source=url,
        )
    with _private_dir(cache_dir) as scratch:
        tmp = scratch / cached.name
        logger.info("downloading %s to %s", url, cached)
        try:
            torch.hub.download_url_to_file(_strip_fragment(url), os.fspath(tmp), None, progress=not quiet)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                raise SourceNotFoundError(
                    f"{url} answered HTTP {exc.code} ({exc.reason}); check the URL", source=url
                ) from exc
            raise SourceError(
                f"{url} answered HTTP {exc.code} ({exc.reason}); nothing was cached; check access to it, "
                "or try again later",
                source=url,
            ) from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise OfflineSourceError(
                f"cannot reach {url} ({getattr(exc, 'reason', exc)}) and it is not cached at {cached}; "
                "connect to the network, or download the file and place it at that path",
                source=url,
            ) from exc
        digest = _sha256(tmp)
        _check(url, cached, digest, full, prefix, cached_copy=False)
        _prove_complete(url, cached, tmp, key=key, weights_only=weights_only)
        os.replace(tmp, cached)
    checked = digest if (full or prefix) else None
    return Download(cached, checked, downloaded=True)


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
        OfflineSourceError: offline or unreachable, and not cached.

    Example:
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve("https://download.pytorch.org/models/resnet18-f37072fd.pth")  # doctest: +SKIP
        >>> ckpt.origin.sha256[:8]  # doctest: +SKIP
        'f37072fd'
    """
    download = download_to_cache(url, quiet=quiet, key=key, weights_only=weights_only)
    ckpt = _open_files(download.path, key=key, weights_only=weights_only)
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
    """Open the fresh download: a transfer cut short, or an error page, fails here, before the cache."""
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


def _check(url: str, dest: Path, digest: str, full: str | None, prefix: str | None, *, cached_copy: bool) -> None:
    wrong = [expected for expected in (full, prefix) if expected and not digest.startswith(expected)]
    if not wrong:
        return
    where = (
        f"the cached copy {dest} does not match; delete it and download again"
        if cached_copy
        else f"nothing was cached at {dest}; check the URL and its hash, or whether the server changed the file"
    )
    raise IntegrityError(f"sha256 mismatch for {url}: expected {wrong[0]}, got {digest}; {where}", source=url)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _basename(url: str) -> str:
    name = os.path.basename(urlsplit(url).path)
    if not name:
        raise SourceSpecError(f"{url!r} names no file; give the URL of the checkpoint file itself", source=url)
    return name


def _strip_fragment(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(fragment=""))


@contextlib.contextmanager
def _private_dir(cache_dir: Path) -> Iterator[Path]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".weightsurgery-download-", dir=cache_dir))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
