"""A URL's entry in the torch hub cache: its name, the hashes it promises, and the mark that it was verified.

Entries live in ``torch.hub.get_dir()/checkpoints/``, the folder
``torch.hub.load_state_dict_from_url`` and torchvision use.
:mod:`~weightsurgery.sources.url` downloads into it; this module says where
a URL's file goes and holds a cached file to its hashes.

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

**The mark.** A verified entry has a mark beside it (``.<name>.sha256``: the
digest, the size and the modification time; :func:`write_mark`). A cached
file that carries a hash is verified again whenever that mark is missing or
stale (a file placed by hand, fetched by torch.hub, or changed since), and
the mark is written once it passes; a cached file that fails is evicted
(:func:`verify_cached`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch.hub

from weightsurgery.errors import IntegrityError, SourceSpecError

__all__ = [
    "cache_path",
    "expected_hashes",
    "remove_entry",
    "strip_fragment",
    "verify_cached",
    "write_mark",
]

logger = logging.getLogger(__name__)

_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_TORCH_HUB_HASH = torch.hub.HASH_REGEX  # -([a-f0-9]*)\.  : what torch.hub's check_hash reads
_FRAGMENT_HASH = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_KEY_DIGITS = 12
_CHUNK = 1 << 20


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
    key = hashlib.sha256(strip_fragment(url).encode()).hexdigest()[:_KEY_DIGITS]
    return folder / f"{stem[:96]}.{key}{suffix}"


def remove_entry(path: Path) -> None:
    """Remove a cached file and its verification mark."""
    for stale in (path, _mark_path(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def verify_cached(url: str, cached: Path, full: str | None, prefix: str | None) -> str | None:
    """Hold a cached file to its hashes; a fresh mark saves re-hashing. A mismatch evicts it.

    Args:
        url: the URL the file is cached for, for messages.
        cached: the cached file.
        full: the full sha256 the URL's fragment pins, if any.
        prefix: the hash prefix its file name carries, if any.

    Returns:
        The verified sha256 when the URL promised one, else ``None``.

    Raises:
        IntegrityError: the file does not hash to what was promised, or (with no
            promise) to what it was downloaded as; it was removed from the cache.
    """
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
        remove_entry(cached)
        what = "expected" if promised else "it was downloaded as"
        raise IntegrityError(
            f"sha256 mismatch for {url}: the cached copy {cached} has {digest}, {what} {wrong}; "
            "removed it from the cache, so the next run downloads it again",
            source=url,
        )
    write_mark(cached, digest, url)
    return digest if promised else None


def _mark_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def _read_mark(path: Path) -> dict[str, Any] | None:
    try:
        mark = json.loads(_mark_path(path).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("sha256"), str) else None


def write_mark(path: Path, digest: str, url: str) -> None:
    """Mark ``path`` as verified to hash to ``digest``; a cache that cannot be written is left unmarked."""
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


def strip_fragment(url: str) -> str:
    """The URL less its ``#fragment``: what is fetched, and what the cache key hashes.

    Example:
        >>> strip_fragment("https://example.com/w.pth?v=2#sha256=ab")
        'https://example.com/w.pth?v=2'
    """
    return urlunsplit(urlsplit(url)._replace(fragment=""))
