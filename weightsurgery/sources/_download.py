"""One HTTP(S) file transfer, bounded in time: connect and read timeouts, retries with backoff.

``torch.hub.download_url_to_file`` opens the URL with no timeout (a server
that accepts the connection and then sends nothing hangs the caller forever)
and accepts a connection closed before ``Content-Length`` bytes arrived as a
complete file. :func:`fetch` does neither. It is the standard library's
``urllib`` (so proxies, redirects and TLS settings work as they do for
``torch.hub``), with:

* a **connect timeout** for opening the connection, and a **read timeout**
  for every wait on the socket after it (the answer's headers, then each
  chunk of the body);
* a **length check**: fewer bytes than the server's ``Content-Length`` is a
  transfer cut short;
* **retries with exponential backoff** for what can pass: a timeout, a
  refused or reset connection, a transfer cut short, and HTTP 408, 429, 500,
  502, 503 and 504. A 404 or a 403 is not retried. A 429 or 503 with a
  ``Retry-After`` of up to 60 s waits that long instead; a longer one ends the
  download at once, with an error that says when to try again;
* a **total deadline** per file, retries and waits included, so a server that
  drips a byte every few seconds (never silent for a whole read timeout) is
  still stopped: :meth:`DownloadPolicy.deadline_for`.

The settings come from :class:`DownloadPolicy`; :meth:`DownloadPolicy.from_env`
reads them from ``WEIGHTSURGERY_CONNECT_TIMEOUT``, ``WEIGHTSURGERY_READ_TIMEOUT``,
``WEIGHTSURGERY_DOWNLOAD_RETRIES``, ``WEIGHTSURGERY_RETRY_BACKOFF`` and
``WEIGHTSURGERY_DOWNLOAD_DEADLINE``. Every error names the URL.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import http.client
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from weightsurgery.errors import (
    CorruptCheckpointError,
    OfflineSourceError,
    SourceError,
    SourceNotFoundError,
    SourceSpecError,
)

__all__ = ["MAX_RETRY_AFTER", "Deadline", "DownloadPolicy", "fetch", "retry_after"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_MAX_WAIT = 30.0
MAX_RETRY_AFTER = 60.0  # the longest Retry-After honoured; a longer one ends the download
_BASE_DEADLINE = 600.0  # the default deadline: 10 minutes...
_FLOOR_RATE = 100 * 1024  # ...plus the file's size at 100 KiB/s


@dataclasses.dataclass(frozen=True)
class DownloadPolicy:
    """How long a download may wait, and how often it is tried.

    Attributes:
        connect_timeout: seconds to open the connection (``WEIGHTSURGERY_CONNECT_TIMEOUT``).
        read_timeout: seconds of silence allowed on an open connection, before the
            answer and between chunks (``WEIGHTSURGERY_READ_TIMEOUT``).
        retries: further attempts after a failure that can pass (``WEIGHTSURGERY_DOWNLOAD_RETRIES``).
        backoff: seconds before the first retry, doubled for each next one, at most 30
            (``WEIGHTSURGERY_RETRY_BACKOFF``).
        deadline: seconds one file's download may take in all, retries and waits included
            (``WEIGHTSURGERY_DOWNLOAD_DEADLINE``); ``None``: derived from the file's size
            (:meth:`deadline_for`).

    Example:
        >>> DownloadPolicy()
        DownloadPolicy(connect_timeout=10.0, read_timeout=30.0, retries=3, backoff=1.0, deadline=None)
        >>> [DownloadPolicy().wait(n) for n in (1, 2, 3)]
        [1.0, 2.0, 4.0]
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    deadline: float | None = None

    ENV = {
        "connect_timeout": "WEIGHTSURGERY_CONNECT_TIMEOUT",
        "read_timeout": "WEIGHTSURGERY_READ_TIMEOUT",
        "retries": "WEIGHTSURGERY_DOWNLOAD_RETRIES",
        "backoff": "WEIGHTSURGERY_RETRY_BACKOFF",
        "deadline": "WEIGHTSURGERY_DOWNLOAD_DEADLINE",
    }

    @classmethod
    def from_env(cls) -> DownloadPolicy:
        """The defaults, overridden by the ``WEIGHTSURGERY_*`` variables that are set.

        Raises:
            SourceSpecError: a variable is not a number (timeouts above 0, retries and backoff 0 or more).
        """
        values: dict[str, Any] = {}
        for field, name in cls.ENV.items():
            raw = os.environ.get(name, "").strip()
            if not raw:
                continue
            kind = int if field == "retries" else float
            try:
                value = kind(raw)
            except ValueError:
                value = None
            positive = field.endswith("timeout") or field == "deadline"
            if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
                rule = "a number of seconds above 0" if positive else f"a {kind.__name__} of 0 or more"
                raise SourceSpecError(f"{name}={raw!r} is not valid; set it to {rule}, or unset it", source=name)
            values[field] = value
        return cls(**values)

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.backoff * 2 ** (retry - 1), _MAX_WAIT)

    def deadline_for(self, size: int | None) -> float:
        """Seconds the download of one file may take in all, retries and waits included.

        ``deadline`` when it is set; else 10 minutes plus the file's size at 100 KiB/s
        (a 5 GB checkpoint gets 14 hours, a 100 MB one 26 minutes): generous for a slow
        link, and still an end for a server that drips a byte at a time. ``size`` is
        the size the server announced, else the bytes received so far.

        Example:
            >>> DownloadPolicy().deadline_for(100 * 1024 * 1024)
            1624.0
            >>> DownloadPolicy(deadline=5.0).deadline_for(100 * 1024 * 1024)
            5.0
        """
        if self.deadline is not None:
            return self.deadline
        return _BASE_DEADLINE + (size or 0) / _FLOOR_RATE


class _Retryable(Exception):
    """A failure that may pass; ``kind`` picks the final error if it does not.

    ``deadline`` (the file's deadline passed) and ``later`` (a ``Retry-After`` beyond
    :data:`MAX_RETRY_AFTER`) are final at once.
    """

    def __init__(self, kind: str, why: str, *, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why
        self.retry_after = retry_after


class Deadline:
    """The time left to download one file: :meth:`DownloadPolicy.deadline_for` from its start.

    Attributes:
        size: the size the server announced, once known.
    """

    def __init__(self, policy: DownloadPolicy) -> None:
        self.policy = policy
        self.start = time.monotonic()
        self.size: int | None = None

    def seconds(self, received: int = 0) -> float:
        """The deadline, in seconds from the start."""
        return self.policy.deadline_for(self.size if self.size is not None else received)

    def left(self, received: int = 0) -> float:
        """Seconds left before the deadline (0 or less: passed)."""
        return self.seconds(received) - self.elapsed()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number, or an HTTP date); ``None`` if absent or unreadable.

    Example:
        >>> retry_after("7"), retry_after(None), retry_after("soon"), retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
        (7.0, None, None, 0.0)
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def fetch(url: str, dest: Path, *, entry: Path, policy: DownloadPolicy, quiet: bool) -> str:
    """Download ``url`` into the new file ``dest``, retrying what can pass; returns its sha256.

    Args:
        url: an ``http://`` or ``https://`` URL, without a fragment.
        dest: the file to write (its folder exists); a failed attempt leaves a partial file there.
        entry: the cache entry the file is meant for, named in the errors.
        policy: timeouts, retries and the deadline.
        quiet: no progress bar.

    Returns:
        The sha256 of what was written.

    Raises:
        SourceNotFoundError: HTTP 404 or 410.
        SourceError: another HTTP error, 429/5xx on every attempt, or a ``Retry-After`` beyond 60 s.
        OfflineSourceError: the server could not be reached, or stalled, on every attempt, or the
            file's deadline passed.
        CorruptCheckpointError: the transfer was cut short on every attempt.

    Example:
        >>> fetch("https://example.com/w.pth", Path("/tmp/w.pth"), entry=Path("w.pth"),
        ...       policy=DownloadPolicy(), quiet=True)  # doctest: +SKIP
        '3f2a...'
    """
    attempts = policy.retries + 1
    deadline = Deadline(policy)
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_once(url, dest, policy=policy, quiet=quiet, deadline=deadline)
        except _Retryable as exc:
            if attempt == attempts or exc.kind in ("deadline", "later"):
                raise _final(url, entry, exc, attempt, deadline) from exc
            wait = policy.wait(attempt) if exc.retry_after is None else exc.retry_after
            if wait >= deadline.left():
                why = f"{exc.why}, and the next try, {wait:g} s later, would pass it"
                raise _final(url, entry, _Retryable("deadline", why), attempt, deadline) from exc
            logger.warning("%s: %s; trying again in %.1f s (attempt %d of %d)", url, exc.why, wait, attempt + 1, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch_once(url: str, dest: Path, *, policy: DownloadPolicy, quiet: bool, deadline: Deadline) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "weightsurgery", "Accept-Encoding": "identity"})
    opener = urllib.request.build_opener(_HTTPHandler(policy.read_timeout), _HTTPSHandler(policy.read_timeout))
    try:
        response = opener.open(request, timeout=policy.connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in _RETRY_STATUS:
            why = f"HTTP {exc.code} ({exc.reason})"
            wait = retry_after(exc.headers.get("Retry-After")) if exc.code in (429, 503) else None
            if wait is not None and wait > MAX_RETRY_AFTER:
                raise _Retryable("later", f"{why} and asks to wait {wait:.0f} s (Retry-After)") from exc
            raise _Retryable("status", why, retry_after=wait) from exc
        if exc.code in (404, 410):
            raise SourceNotFoundError(f"{url} answered HTTP {exc.code} ({exc.reason}); check the URL", source=url) from exc
        raise SourceError(
            f"{url} answered HTTP {exc.code} ({exc.reason}); nothing was cached; check access to it, or try again later",
            source=url,
        ) from exc
    except urllib.error.URLError as exc:  # raised while connecting
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _Retryable("connect", f"no connection within {policy.connect_timeout:g} s (connect timeout)") from exc
        if isinstance(reason, ConnectionError):
            raise _Retryable("connect", str(reason)) from exc
        raise OfflineSourceError(f"cannot reach {url} ({reason})", source=url) from exc
    except TimeoutError as exc:
        raise _Retryable("read", _silent(policy, "before answering")) from exc
    except (ConnectionError, http.client.HTTPException) as exc:
        raise _Retryable("connect", f"{type(exc).__name__}: {exc}") from exc
    with response:
        return _stream(url, response, dest, policy=policy, quiet=quiet, deadline=deadline)


def _stream(url: str, response: Any, dest: Path, *, policy: DownloadPolicy, quiet: bool, deadline: Deadline) -> str:
    from tqdm.auto import tqdm

    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    deadline.size = total
    digest = hashlib.sha256()
    received = 0
    with open(dest, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet, desc=dest.name, leave=False
    ) as bar:
        while True:
            try:
                chunk = response.read1(_CHUNK)  # what has arrived: a stall mid-file counts the bytes before it
            except TimeoutError as exc:
                raise _Retryable("read", _silent(policy, f"after {received} bytes")) from exc
            except (ConnectionError, http.client.HTTPException) as exc:
                raise _Retryable("cut", f"the connection broke after {received} bytes ({type(exc).__name__})") from exc
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if deadline.left(received) <= 0:
                of = f" of {total}" if total is not None else ""
                raise _Retryable("deadline", f"{received}{of} bytes had arrived after {deadline.elapsed():.1f} s")
    if total is not None and received < total:
        raise _Retryable("cut", f"the connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _silent(policy: DownloadPolicy, when: str) -> str:
    return f"the server sent nothing for {policy.read_timeout:g} s {when} (read timeout)"


def _final(url: str, entry: Path, exc: _Retryable, attempts: int, deadline: Deadline) -> SourceError:
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    cached = f"nothing was cached at {entry}"
    if exc.kind == "deadline":
        return OfflineSourceError(
            f"cannot download {url}: it did not finish within its deadline of {deadline.seconds():g} s "
            f"({exc.why}, on attempt {attempts}); {cached}; raise {DownloadPolicy.ENV['deadline']} for a slow server, "
            "or download the file and place it at that path",
            source=url,
        )
    if exc.kind == "later":
        return SourceError(
            f"{url} answered {exc.why}, longer than the {MAX_RETRY_AFTER:g} s weightsurgery waits; {cached}; "
            "try again after that",
            source=url,
        )
    if exc.kind == "cut":
        return CorruptCheckpointError(
            f"the download of {url} is not a whole checkpoint ({exc.why}, on each of {tries}); {cached}; "
            "try again later",
            source=url,
        )
    if exc.kind == "status":
        return SourceError(f"{url} answered {exc.why} on each of {tries}; {cached}; try again later", source=url)
    variable = DownloadPolicy.ENV["read_timeout" if exc.kind == "read" else "connect_timeout"]
    verb = "cannot download" if exc.kind == "read" else "cannot reach"
    return OfflineSourceError(
        f"{verb} {url} ({exc.why}, on each of {tries}) and it is not cached at {entry}; "
        f"try again later, raise {variable} for a slow server, or download the file and place it at that path",
        source=url,
    )


class _ReadTimeout:
    """A connection class whose socket waits ``read_timeout`` once connected (``timeout`` covers the connect)."""

    read_timeout: float

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class _HTTPConnection(_ReadTimeout, http.client.HTTPConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout


class _HTTPSConnection(_ReadTimeout, http.client.HTTPSConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self.read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, read_timeout=self.read_timeout), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self.read_timeout = read_timeout

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            functools.partial(_HTTPSConnection, read_timeout=self.read_timeout),
            req,
            context=self._context,  # type: ignore[attr-defined]
        )
