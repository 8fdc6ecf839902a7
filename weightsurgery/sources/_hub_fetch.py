"""The hub client side of :mod:`weightsurgery.sources.hub`: one repo's files, errors mapped.

Every file goes through :func:`huggingface_hub.hf_hub_download`; nothing here
speaks HTTP. Its exceptions become ours:

* ``GatedRepoError``: :class:`SourceNotFoundError` (accept the terms, set ``HF_TOKEN``);
* ``RepositoryNotFoundError``: :class:`SourceNotFoundError` (check the id, or log in);
* ``RevisionNotFoundError``: :class:`SourceNotFoundError` (name an existing revision);
* ``EntryNotFoundError``: the next candidate file, or :class:`SourceNotFoundError`;
* ``LocalEntryNotFoundError`` (offline, or unreachable, and not cached): :class:`OfflineSourceError`;
* ``HfHubHTTPError`` (a 5xx the client gave up on, a 401...), the client's own
  transport errors (a connection cut mid-file is ``httpx``'s
  ``RemoteProtocolError``, after the client's own resumes), and the
  ``OSError`` of its size check: :class:`SourceError`, naming the repo and
  the file;
* ``ValueError`` (``HFValidationError``, a bad repo id or file path): :class:`SourceSpecError`.

The client's requests are bounded by weightsurgery's own download settings
(:mod:`~weightsurgery.sources._hub_limits`): a hub that accepts connections and
never answers is an :class:`OfflineSourceError` after the connect or read
timeout and the retries, naming the repo, the file and the setting to raise,
and a hub that drips the file is stopped at the file's deadline.

A file path is checked before the client sees it: a path that leaves the
repo (``../x``, ``/etc/x``) is refused, and one named by a shard index is a
:class:`CorruptCheckpointError` naming the index.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import posixpath
import sys
from pathlib import Path
from typing import Any

import huggingface_hub

from weightsurgery.errors import (
    CorruptCheckpointError,
    OfflineSourceError,
    SourceError,
    SourceNotFoundError,
    SourceSpecError,
)
from weightsurgery.sources._download import DownloadPolicy
from weightsurgery.sources._hub_limits import HubLimit, bounded

__all__ = ["HUB_PREFIX", "Fetcher", "commit_of", "evict", "outside_repo"]

logger = logging.getLogger(__name__)

# Older huggingface_hub releases have no tqdm_class argument; there, quiet= falls back to their own settings.
_TAKES_TQDM_CLASS = "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters

HUB_PREFIX = "hf-hub:"
FIRST_CHOICE = "model.safetensors"


class Fetcher:
    """``hf_hub_download`` for one repo, mapping its errors to ours.

    After the first file the hub could not be asked about (offline,
    unreachable, or silent until the timeouts), later files are looked up in
    the cache only, so a fallback list never sits through the client's retry
    backoff, or the timeouts, more than once.

    Args:
        repo_id: ``org/repo``.
        revision: branch, tag or commit; ``None`` means ``main``.
        quiet: no progress bars.
        policy: timeouts, retries and deadline; ``None`` reads :meth:`DownloadPolicy.from_env`.
    """

    def __init__(
        self, repo_id: str, *, revision: str | None, quiet: bool, policy: DownloadPolicy | None = None
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.tqdm_class = _silent_tqdm() if quiet else None
        self.policy = policy or DownloadPolicy.from_env()
        self.unreachable: str | None = None  # why the hub could not be asked; then only the cache is read

    def fetch(self, filename: str, *, missing_ok: bool = False, revision: str | None = None) -> Path | None:
        """Download (or find in the cache) one file of the repo.

        Args:
            filename: the path in the repo.
            missing_ok: return ``None`` instead of raising when the file is absent or not cached offline.
            revision: overrides the fetcher's revision (shards are pinned to their index's commit).

        Returns:
            The file in the cache, under ``snapshots/<commit>/``, or ``None`` (``missing_ok``).

        Raises:
            SourceNotFoundError: no such repo, revision or (unless ``missing_ok``) file.
            OfflineSourceError: offline, unreachable or silent, and not cached (unless ``missing_ok``);
                or the transfer stalled, or passed its deadline.
            SourceError: the transfer failed on every try, or the hub asks to wait too long.
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        revision = revision or self.revision
        where = f"{self.repo_id}@{revision or 'main'}"
        if outside_repo(filename):
            raise SourceSpecError(
                f"{filename!r} is not a path inside hub repo {self.repo_id} (it leaves the repo); "
                "name a file relative to the repo root, e.g. 'hf-hub:org/repo/sub/weights.safetensors'",
                source=f"{HUB_PREFIX}{where}/{filename}",
            )
        filename = posixpath.normpath(filename)
        try:
            with bounded(self.policy) as watch:
                path = hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=revision,
                    local_files_only=self.unreachable is not None,
                    **({"tqdm_class": self.tqdm_class} if _TAKES_TQDM_CLASS else {}),
                )
        except HubLimit as exc:
            return self._over_limit(exc, filename, where, revision, missing_ok=missing_ok)
        except GatedRepoError as exc:
            raise SourceNotFoundError(
                f"{self.repo_id} is gated: accept its terms on the Hub page, then set HF_TOKEN "
                "(or run `hf auth login`)",
                source=f"{HUB_PREFIX}{where}",
            ) from exc
        except RepositoryNotFoundError as exc:
            raise SourceNotFoundError(
                f"hub repo {self.repo_id!r} does not exist or is private; check the id, "
                "or set HF_TOKEN (or run `hf auth login`) if it is private",
                source=f"{HUB_PREFIX}{where}",
            ) from exc
        except RevisionNotFoundError as exc:
            raise SourceNotFoundError(
                f"hub repo {self.repo_id!r} has no revision {revision!r}; pass an existing branch, tag or commit "
                "as 'hf-hub:org/repo@revision' or revision=",
                source=f"{HUB_PREFIX}{where}",
            ) from exc
        except LocalEntryNotFoundError as exc:  # before EntryNotFoundError: it subclasses it
            self.unreachable = self.unreachable or _why_unreachable(exc)
            return self._not_cached(filename, where, revision, missing_ok=missing_ok, cause=exc)
        except EntryNotFoundError as exc:
            if missing_ok:
                logger.debug("%s has no %s", where, filename)
                return None
            raise SourceNotFoundError(
                f"hub repo {where} has no file {filename!r}; check the path in the repo "
                f"(it is relative to the repo root), or leave it out to take {FIRST_CHOICE}",
                source=f"{HUB_PREFIX}{where}/{filename}",
            ) from exc
        except ValueError as exc:  # HFValidationError and the client's own path checks
            raise SourceSpecError(
                f"the hub client refused {filename!r} from {where}: {exc}; check the repo id and the path in the repo",
                source=f"{HUB_PREFIX}{where}/{filename}",
            ) from exc
        except (OSError, *_transport_errors()) as exc:  # HfHubHTTPError is an OSError too
            raise SourceError(
                f"downloading {filename} from hub repo {where} failed ({type(exc).__name__}: {_first_line(exc)}); "
                "nothing usable was cached; try again (huggingface_hub resumes a partial download), "
                "or check HF_ENDPOINT and your connection",
                source=f"{HUB_PREFIX}{where}/{filename}",
            ) from exc
        if watch is not None and watch.failure is not None and watch.failure[0] in ("connect", "read"):
            if not watch.answered:  # served from the cache after a silent hub: the next files read only the cache
                self.unreachable = f"the hub at {_endpoint()} did not answer ({watch.failure[1]})"
        return Path(path)

    def _over_limit(
        self, exc: HubLimit, filename: str, where: str, revision: str | None, *, missing_ok: bool
    ) -> None:
        """The error for a bound the client's requests reached (:mod:`~weightsurgery.sources._hub_limits`)."""
        source = f"{HUB_PREFIX}{where}/{filename}"
        if exc.kind in ("connect", "read") and not exc.answered:  # the hub never answered: as if unreachable
            self.unreachable = _why_silent(exc)
            return self._not_cached(filename, where, revision, missing_ok=missing_ok, cause=exc)
        if exc.kind == "later":
            raise SourceError(
                f"downloading {filename} from hub repo {where} stopped: the hub answered {exc.why}; try again after that",
                source=source,
            ) from exc
        error = OfflineSourceError if exc.kind in ("connect", "read", "deadline") else SourceError
        raise error(
            f"downloading {filename} from hub repo {where} failed ({exc.why}); nothing usable was cached; "
            "try again (huggingface_hub resumes a partial download)" + (f", or raise {exc.setting}" if exc.setting else ""),
            source=source,
        ) from exc

    def _not_cached(
        self, filename: str, where: str, revision: str | None, *, missing_ok: bool, cause: BaseException
    ) -> None:
        """``None`` (``missing_ok``), else the :class:`OfflineSourceError` of a file the hub could not be asked for."""
        logger.info("%s: %s not cached and %s; reading only the cache now", where, filename, self.unreachable)
        if missing_ok:
            return None
        raise OfflineSourceError(
            f"{filename} from {where} is not in the local cache and {self.unreachable}; fetch it once online, "
            f"e.g. `hf download {self.repo_id} {filename}`" + (f" --revision {revision}" if revision else ""),
            source=f"{HUB_PREFIX}{where}/{filename}",
        ) from cause

    def fetch_shards(self, index_name: str, index_local: Path) -> tuple[tuple[str, Path], ...]:
        """Fetch every shard an ``*.index.json`` names, at the index's own commit: ``(path in repo, local)``."""
        try:
            weight_map = json.loads(index_local.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpointError(
                f"{self.repo_id}/{index_name} is not a shard index (no 'weight_map'); name a weights file instead",
                source=f"{HUB_PREFIX}{self.repo_id}/{index_name}",
            ) from exc
        folder = posixpath.dirname(index_name)
        named = dict.fromkeys(weight_map.values()) if isinstance(weight_map, dict) else {}
        leaving = [shard for shard in named if not isinstance(shard, str) or outside_repo(posixpath.join(folder, shard))]
        if leaving or not named:
            raise CorruptCheckpointError(
                f"{self.repo_id}/{index_name} names shards outside the repo folder ({', '.join(map(repr, leaving))}); "
                "a shard index may only name files beside it or below it; name a weights file instead"
                if leaving
                else f"{self.repo_id}/{index_name} has an empty 'weight_map'; name a weights file instead",
                source=f"{HUB_PREFIX}{self.repo_id}/{index_name}",
            )
        shards = tuple(posixpath.normpath(posixpath.join(folder, shard)) for shard in named)
        commit = commit_of(index_local)
        return tuple((shard, self.fetch(shard, revision=commit)) for shard in shards)  # type: ignore[misc]


def commit_of(local: Path) -> str | None:
    """The commit of a file at ``.../snapshots/<commit>/<path in repo>`` in the hub cache."""
    for parent in local.parents:
        if parent.parent.name == "snapshots":
            return parent.name
    return None


def outside_repo(filename: str) -> bool:
    """Whether a path in a repo leaves it: absolute, ``..`` above the root, a backslash or a drive.

    Example:
        >>> [outside_repo(p) for p in ("a/b.safetensors", "a/../b.bin", "../b.bin", "/etc/passwd", "C:x")]
        [False, False, True, True, True]
    """
    if not filename or filename.startswith("/") or "\\" in filename or ":" in filename.split("/", 1)[0]:
        return True
    return posixpath.normpath(filename).split("/", 1)[0] in ("..", ".")


def evict(local: Path) -> None:
    """Remove a file from the hub cache: its snapshot entry and the blob it points to.

    The next ``hf_hub_download`` of it then downloads it again, even at the same commit.
    """
    blob = local.resolve() if local.is_symlink() else None
    with contextlib.suppress(FileNotFoundError):
        local.unlink()
    if blob is not None and blob.parent.name == "blobs":
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library errors of whichever client library huggingface_hub runs on (already imported)."""
    found: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _why_unreachable(exc: BaseException) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    cause = exc.__cause__
    return f"the hub at {_endpoint()} could not be reached" + (f" ({cause})" if cause else "")


def _why_silent(exc: HubLimit) -> str:
    return f"the hub at {_endpoint()} did not answer ({exc.why}; raise {exc.setting} for a slow hub)"


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class _Silent(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent
