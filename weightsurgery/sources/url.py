"""URL sources: ``http(s)://`` checkpoints, downloaded once into the torch hub cache, verified.

Downloads land in ``torch.hub.get_dir()/checkpoints/``, the folder
``torch.hub.load_state_dict_from_url`` and torchvision use.

**The cache is keyed by URL** (:func:`cache_path`). Two URLs ending in the
same file name are different files, so an entry is named
``<stem>.<12 hex of the URL's sha256><suffix>`` (``w.safetensors`` from
``https://a/x/w.safetensors`` is ``w.3f2a9c1b7d4e.safetensors``). Only a name
that carries a hash keeps its own name, because the hash pins the content:
``resnet18-f37072fd.pth`` is the same file whatever URL serves it, and it is
where torch.hub and torchvision cache it too. The cache key is the URL less
its ``#fragment``, query included.

**A hash in a file name** follows torch.hub's convention, ``name-<sha256
prefix>.ext``, and is read only where that convention clearly applies
(:func:`expected_hashes`):

* for torchvision's weights, which torch.hub itself checks (``check_hash=True``),
  torch.hub's own pattern, ``-<hex>.``, 8 digits or more;
* for any other URL, the last ``-<hex>`` before the suffix, 8 to 64 digits,
  with at least one of ``a-f``: ``resnet-20240115.pth`` carries a date, not a hash.

A ``#sha256=<64 hex>`` fragment pins the whole content, on any URL.

**Verification.** :func:`download_to_cache` has :func:`~weightsurgery.sources._download.fetch`
write into a private folder beside the cache (connect and read timeouts,
retries with backoff, a transfer cut short refused), then checks the
**full sha256** against the fragment and the name, and that the file
**opens as a checkpoint** (an HTML error page served as 200 does not). Only
then is it renamed into the cache, with a mark beside it (``.<name>.sha256``:
the digest, the size and the modification time). A cached file that carries
a hash is verified again whenever that mark is missing or stale (a file
placed by hand, fetched by torch.hub, or changed since), and the mark is
written once it passes; a cached file that fails is evicted. A cached file
that fails to open is evicted too (:mod:`~weightsurgery.sources._evict`),
so the next run downloads it again.

Offline (``HF_HUB_OFFLINE=1``, the switch huggingface_hub reads) a cached file
is used and an uncached one fails at once with :class:`OfflineSourceError`,
naming where to put the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch.hub

from weightsurgery.errors import (
    CorruptCheckpointError,
    IntegrityError,
    OfflineSourceError,
    SourceError,
    SourceSpecError,
)
from weightsurgery.sources._download import DownloadPolicy, fetch
from weightsurgery.sources._evict import open_or_evict
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

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

_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_TORCH_HUB_HASH = torch.hub.HASH_REGEX  # -([a-f0-9]*)\.  : what torch.hub's check_hash reads
_FRAGMENT_HASH = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_KEY_DIGITS = 12
_CHUNK = 1 << 20


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


def expected_hashes(url: str, *, torch_hub_names: bool = False) -> tuple[str | None, str | None]:
    """The hashes a URL promises: ``(full sha256 from #sha256=, prefix from the file name)``.

    Args:
        url: the URL, possibly with a ``#sha256=<64 hex>`` fragment.
        torch_hub_names: read the file name as torch.hub's ``check_hash`` does (torchvision's
            weights): any ``-<hex>.`` of 8 digits or more, digits only included.

    Returns:
        The full hash (lowercase) or ``None``, and the file-name prefix or ``None``.

    Raises:
        SourceSpecError: the fragment is present but is not ``sha256=`` and 64 hex digits,
            or the URL names no file.

    Example:
        >>> expected_hashes("https://example.com/resnet18-f37072fd.pth")
        (None, 'f37072fd')
        >>> expected_hashes("https://example.com/resnet-20240115.pth")  # a date, not a hash
        (None, None)
        >>> expected_hashes("https://download.pytorch.org/models/vgg13-19584684.pth", torch_hub_names=True)
        (None, '19584684')
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
    name = _file_name(url)
    if torch_hub_names:
        found = _TORCH_HUB_HASH.search(name)
        prefix = found.group(1) if found and len(found.group(1)) >= 8 else None
    else:
        found = _NAME_HASH.search(name)
        prefix = found.group(1) if found and not found.group(1).isdigit() else None
    return full, prefix


def cache_path(url: str, *, torch_hub_names: bool = False) -> Path:
    """Where ``url`` is cached: its own name if that carries a hash, else a name keyed by the URL.

    Args:
        url: the URL.
        torch_hub_names: see :func:`expected_hashes`.

    Returns:
        The path under ``torch.hub.get_dir()/checkpoints``; place a file there to use it offline.

    Raises:
        SourceSpecError: the URL names no file (it ends in ``/``, ``/.`` or ``/..``).

    Example:
        >>> cache_path("https://example.com/resnet18-f37072fd.pth").name
        'resnet18-f37072fd.pth'
        >>> a, b = (cache_path(f"https://{host}/w.safetensors").name for host in ("a.org", "b.org"))
        >>> a != b, a.startswith("w.") and a.endswith(".safetensors")
        (True, True)
    """
    name = _file_name(url)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if expected_hashes(url, torch_hub_names=torch_hub_names)[1] is not None:
        return folder / name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    else:
        suffix = "." + suffix[:16]
    key = hashlib.sha256(_strip_fragment(url).encode()).hexdigest()[:_KEY_DIGITS]
    return folder / f"{stem[:96]}.{key}{suffix}"


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
        digest = _verify_cached(url, cached, full, prefix)
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
        digest = fetch(_strip_fragment(url), tmp, entry=cached, policy=policy, quiet=quiet)
        _check(url, cached, digest, full, prefix)
        _prove_complete(url, cached, tmp, key=key, weights_only=weights_only)
        os.replace(tmp, cached)
    _write_mark(cached, digest, url)
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
        evict=_remove_entry,
        came_from=download.url or "a download",
    )


def _remove_entry(path: Path) -> None:
    """Remove a cached file and its verification mark."""
    for stale in (path, _mark_path(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


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


def _verify_cached(url: str, cached: Path, full: str | None, prefix: str | None) -> str | None:
    """Hold a cached file to its hashes; a fresh mark saves re-hashing. A mismatch evicts it."""
    stat = cached.stat()
    mark = _read_mark(cached)
    fresh = mark is not None and (mark.get("size"), mark.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
    promised = [expected for expected in (full, prefix) if expected]
    if fresh and all(mark["sha256"].startswith(expected) for expected in promised):
        return mark["sha256"] if promised else None
    if not promised and mark is None:
        return None  # placed by hand, with nothing to hold it to
    digest = _sha256(cached)
    wanted = promised or [mark["sha256"]]  # no promise: it must still be what was downloaded
    wrong = next((expected for expected in wanted if not digest.startswith(expected)), None)
    if wrong is not None:
        _remove_entry(cached)
        what = "expected" if promised else "it was downloaded as"
        raise IntegrityError(
            f"sha256 mismatch for {url}: the cached copy {cached} has {digest}, {what} {wrong}; "
            "removed it from the cache, so the next run downloads it again",
            source=url,
        )
    _write_mark(cached, digest, url)
    return digest if promised else None


def _check(url: str, dest: Path, digest: str, full: str | None, prefix: str | None) -> None:
    wrong = [expected for expected in (full, prefix) if expected and not digest.startswith(expected)]
    if wrong:
        raise IntegrityError(
            f"sha256 mismatch for {url}: expected {wrong[0]}, got {digest}; nothing was cached at {dest}; "
            "check the URL and its hash, or whether the server changed the file",
            source=url,
        )


def _mark_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def _read_mark(path: Path) -> dict[str, Any] | None:
    try:
        mark = json.loads(_mark_path(path).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("sha256"), str) else None


def _write_mark(path: Path, digest: str, url: str) -> None:
    stat = path.stat()
    text = json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "url": url})
    mark = _mark_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=mark.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, mark)
    except OSError as exc:  # a read-only cache still works; the hash is checked again next time
        logger.debug("could not mark %s as verified: %s", path, exc)


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


def _file_name(url: str) -> str:
    """The URL's last path segment; ``/``, ``/.`` and ``/..`` (a folder, RFC 3986) name no file."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise SourceSpecError(
            f"{url!r} names no file (its path ends in {'/' + name!r}, a folder); "
            "give the URL of the checkpoint file itself",
            source=url,
        )
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
