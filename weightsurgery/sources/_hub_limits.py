"""Bounds on huggingface_hub's own HTTP requests while weightsurgery fetches a hub file.

Left alone, huggingface_hub (1.x and 2.x, on httpx) waits on its own clock:
10 s for the first metadata request, then, for a file that is not cached,
60 s per request over six more tries with backoff, and 10 s per read of the
body with five resumes; a hub that accepts connections and never answers
costs minutes. Inside :func:`bounded`, every request the client makes:

* waits at most ``WEIGHTSURGERY_CONNECT_TIMEOUT`` to connect and
  ``WEIGHTSURGERY_READ_TIMEOUT`` for each read (for weightsurgery's fetches
  these replace ``HF_HUB_ETAG_TIMEOUT`` and ``HF_HUB_DOWNLOAD_TIMEOUT``);
* is tried at most ``WEIGHTSURGERY_DOWNLOAD_RETRIES`` + 1 times, per method
  and URL (the client's own resumes of a file count); the next try raises
  :class:`HubLimit`, which names the last failure;
* ends at the file's deadline (:meth:`DownloadPolicy.deadline_for`, from the
  size the hub announces), checked as each chunk of the body arrives;
* ends at a 429 or 503 whose ``Retry-After`` is beyond
  :data:`~weightsurgery.sources._download.MAX_RETRY_AFTER`, unless it answers the
  first metadata request (the client then uses the cached file if it has one).

How: huggingface_hub makes one shared httpx client with a factory
(``huggingface_hub.set_client_factory``). The first bounded fetch wraps the
current factory (the user's own, if one was set) so that each client it makes
carries two event hooks. The hooks act only inside :func:`bounded` (a context
variable, so per thread), and other code's hub calls in the same process keep
the client's own behaviour. ``set_client_factory`` closes the shared client
once, at that moment; a factory set later by the user is wrapped again at the
next fetch. With a huggingface_hub that has no ``set_client_factory`` (before
1.0, on ``requests``), nothing is wrapped and the client's own timeouts apply.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from weightsurgery.sources._download import MAX_RETRY_AFTER, Deadline, DownloadPolicy, retry_after

__all__ = ["HubLimit", "Watch", "bounded"]

_CURRENT: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("weightsurgery_hub_fetch", default=None)
_INSTALL_LOCK = threading.Lock()


class HubLimit(Exception):
    """A bound was reached inside the hub client; the fetcher turns it into a :class:`SourceError`.

    Attributes:
        kind: ``connect``, ``read``, ``cut``, ``status``, ``deadline`` or ``later``.
        why: what happened, for the error message.
        setting: the ``WEIGHTSURGERY_*`` variable to raise, or ``None``.
        answered: whether the hub answered any request of this file.
    """

    def __init__(self, kind: str, why: str, *, setting: str | None, answered: bool) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why
        self.setting = setting
        self.answered = answered


@dataclasses.dataclass
class Watch:
    """The requests of one file's fetch, and how they ended.

    Attributes:
        answered: whether the hub answered any of them.
        failure: ``(kind, why)`` of the last one that failed, if any.
    """

    policy: DownloadPolicy
    deadline: Deadline
    tries: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    requests: int = 0
    answered: bool = False
    received: int = 0  # where the body being received has got to in the file
    failure: tuple[str, str] | None = None  # (kind, why) of the last failure

    def before(self, request: Any) -> None:
        key = (request.method, str(request.url))
        tries = self.tries[key] = self.tries.get(key, 0) + 1
        self.keep_deadline()
        if tries > self.policy.retries + 1:
            kind, why = self.failure or ("status", "no usable answer")
            raise self._limit(kind, f"{why}, on each of {tries - 1} attempts at {request.method} {request.url}")
        self.requests += 1
        connect, read = self.policy.connect_timeout, self.policy.read_timeout
        request.extensions["timeout"] = {"connect": connect, "read": read, "write": read, "pool": connect}
        request.extensions["trace"] = functools.partial(self._trace, request.extensions.get("trace"))

    def after(self, response: Any) -> None:
        self.answered = True
        status = response.status_code
        if status >= 400:
            self.failure = ("status", f"HTTP {status}")
        if status in (429, 503) and self.requests > 1:  # the first metadata request may still end in the cache
            wait = retry_after(response.headers.get("Retry-After"))
            if wait is not None and wait > MAX_RETRY_AFTER:
                raise self._limit(
                    "later",
                    f"HTTP {status} and asks to wait {wait:.0f} s (Retry-After), "
                    f"longer than the {MAX_RETRY_AFTER:g} s weightsurgery waits",
                )
        if response.request.method == "GET" and status in (200, 206):
            if self.deadline.size is None:
                self.deadline.size = _announced_size(response.headers)
            self.received = _resumed_at(response.headers) if status == 206 else 0
            response.stream = _watched(type(response.stream))(response.stream, self)

    def keep_deadline(self) -> None:
        """Raise :class:`HubLimit` once the file's deadline has passed."""
        if self.deadline.left(self.received) <= 0:
            raise self._limit("deadline", f"{self._bytes()} had arrived after {self.deadline.elapsed():.1f} s")

    def _trace(self, chained: Callable[[str, dict[str, Any]], Any] | None, name: str, info: dict[str, Any]) -> None:
        if name.endswith(".failed"):
            self.failure = self._describe(name, info.get("exception"))
        if chained is not None:
            chained(name, info)

    def _describe(self, event: str, exc: BaseException | None) -> tuple[str, str]:
        kind = type(exc).__name__
        if kind == "ConnectTimeout":
            return "connect", f"no connection within {self.policy.connect_timeout:g} s (connect timeout)"
        if kind == "ReadTimeout":
            when = f"after {self._bytes()}" if "response_body" in event else "before answering"
            return "read", f"the hub sent nothing for {self.policy.read_timeout:g} s {when} (read timeout)"
        text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "no message"
        return ("connect" if kind in ("ConnectError", "ConnectTimeout") else "cut"), f"{kind}: {text}"

    def _bytes(self) -> str:
        size = self.deadline.size
        return f"{self.received}" + (f" of {size}" if size is not None else "") + " bytes"

    def _limit(self, kind: str, why: str) -> HubLimit:
        setting = {
            "connect": "connect_timeout",
            "read": "read_timeout",
            "deadline": "deadline",
            "cut": "retries",
            "status": "retries",
        }.get(kind)
        if kind == "deadline":
            why = f"it did not finish within its deadline of {self.deadline.seconds(self.received):g} s ({why})"
        return HubLimit(kind, why, setting=DownloadPolicy.ENV[setting] if setting else None, answered=self.answered)


def _resumed_at(headers: Any) -> int:
    """Where a 206 answer starts (``Content-Range: bytes START-END/SIZE``)."""
    start = headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
    return int(start) if start.isdigit() else 0


def _announced_size(headers: Any) -> int | None:
    """The whole file's size: from ``Content-Range`` (a resumed 206), else ``Content-Length``."""
    whole = headers.get("Content-Range", "").rpartition("/")[2]
    length = whole if whole.isdigit() else headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


@functools.cache
def _watched(base: type) -> type:
    """A body stream (a subclass of the client library's own stream class) that counts bytes and keeps the deadline."""
    stream_base = importlib.import_module(base.__module__.split(".")[0]).SyncByteStream

    class _Watched(stream_base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, fetch: Watch) -> None:
            self._inner = inner
            self._fetch = fetch

        def __iter__(self) -> Iterator[bytes]:
            fetch = self._fetch
            for chunk in self._inner:
                fetch.received += len(chunk)
                fetch.keep_deadline()
                yield chunk

        def close(self) -> None:
            self._inner.close()

    return _Watched


def _on_request(request: Any) -> None:
    fetch = _CURRENT.get()
    if fetch is not None:
        fetch.before(request)


def _on_response(response: Any) -> None:
    fetch = _CURRENT.get()
    if fetch is not None:
        fetch.after(response)


def _hooked(factory: Callable[[], Any]) -> Callable[[], Any]:
    def make() -> Any:
        client = factory()
        hooks = client.event_hooks
        if _on_request not in hooks.get("request", ()):  # once, even where a factory wraps this one
            client.event_hooks = {
                "request": [*hooks.get("request", ()), _on_request],
                "response": [*hooks.get("response", ()), _on_response],
            }
        return client

    make.weightsurgery_wraps = factory  # type: ignore[attr-defined]
    return make


def _install() -> bool:
    """Wrap huggingface_hub's client factory once (again if it was replaced); whether its requests can be bounded."""
    try:
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils import _http
    except ImportError:
        return False
    with _INSTALL_LOCK:
        current = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)  # no public getter; without it, nothing is wrapped
        if current is None:
            return False
        if not hasattr(current, "weightsurgery_wraps"):
            set_client_factory(_hooked(current))
    return True


@contextlib.contextmanager
def bounded(policy: DownloadPolicy) -> Iterator[Watch | None]:
    """Bound the hub client's requests for one file's fetch, in this thread.

    Yields:
        What the fetch saw (:class:`Watch`), or ``None`` where the client cannot be bounded.

    Example:
        >>> with bounded(DownloadPolicy(read_timeout=5.0)) as watch:  # doctest: +SKIP
        ...     huggingface_hub.hf_hub_download("org/repo", "model.safetensors")
    """
    watch = Watch(policy, Deadline(policy)) if _install() else None
    token = _CURRENT.set(watch)
    try:
        yield watch
    finally:
        _CURRENT.reset(token)

