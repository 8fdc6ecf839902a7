"""The hub client side of :mod:`weightsurgery.sources.hub`: one repo's files, errors mapped.

Every file goes through :func:`huggingface_hub.hf_hub_download`; nothing here
speaks HTTP. Its exceptions become ours:

* ``GatedRepoError``: :class:`SourceNotFoundError` (accept the terms, set ``HF_TOKEN``);
* ``RepositoryNotFoundError``: :class:`SourceNotFoundError` (check the id, or log in);
* ``RevisionNotFoundError``: :class:`SourceNotFoundError` (name an existing revision);
* ``EntryNotFoundError``: the next candidate file, or :class:`SourceNotFoundError`;
* ``LocalEntryNotFoundError`` (offline, or unreachable, and not cached): :class:`OfflineSourceError`.
"""

from __future__ import annotations

import inspect
import json
import logging
import posixpath
from pathlib import Path
from typing import Any

import huggingface_hub

from weightsurgery.errors import CorruptCheckpointError, OfflineSourceError, SourceNotFoundError

__all__ = ["HUB_PREFIX", "Fetcher", "commit_of"]

logger = logging.getLogger(__name__)

# Older huggingface_hub releases have no tqdm_class argument; there, quiet= falls back to their own settings.
_TAKES_TQDM_CLASS = "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters

HUB_PREFIX = "hf-hub:"
FIRST_CHOICE = "model.safetensors"


class Fetcher:
    """``hf_hub_download`` for one repo, mapping its errors to ours.

    After the first file the hub could not be asked about (offline, or
    unreachable), later files are looked up in the cache only, so a fallback
    list never sits through the client's retry backoff more than once.

    Args:
        repo_id: ``org/repo``.
        revision: branch, tag or commit; ``None`` means ``main``.
        quiet: no progress bars.
    """

    def __init__(self, repo_id: str, *, revision: str | None, quiet: bool) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.tqdm_class = _silent_tqdm() if quiet else None
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
            OfflineSourceError: offline or unreachable and not cached (unless ``missing_ok``).
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
        try:
            path = hf_hub_download(
                self.repo_id,
                filename,
                revision=revision,
                local_files_only=self.unreachable is not None,
                **({"tqdm_class": self.tqdm_class} if _TAKES_TQDM_CLASS else {}),
            )
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
            self.unreachable = _why_unreachable(exc)
            logger.info("%s: %s not cached and %s; reading only the cache now", where, filename, self.unreachable)
            if missing_ok:
                return None
            raise OfflineSourceError(
                f"{filename} from {where} is not in the local cache and {self.unreachable}; fetch it once online, "
                f"e.g. `hf download {self.repo_id} {filename}`" + (f" --revision {revision}" if revision else ""),
                source=f"{HUB_PREFIX}{where}/{filename}",
            ) from exc
        except EntryNotFoundError as exc:
            if missing_ok:
                logger.debug("%s has no %s", where, filename)
                return None
            raise SourceNotFoundError(
                f"hub repo {where} has no file {filename!r}; check the path in the repo "
                f"(it is relative to the repo root), or leave it out to take {FIRST_CHOICE}",
                source=f"{HUB_PREFIX}{where}/{filename}",
            ) from exc
        return Path(path)

    def fetch_shards(self, index_name: str, index_local: Path) -> tuple[str, ...]:
        """Fetch every shard an ``*.index.json`` names, at the index's own commit."""
        try:
            weight_map = json.loads(index_local.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpointError(
                f"{self.repo_id}/{index_name} is not a shard index (no 'weight_map'); name a weights file instead",
                source=f"{HUB_PREFIX}{self.repo_id}/{index_name}",
            ) from exc
        folder = posixpath.dirname(index_name)
        shards = tuple(dict.fromkeys(posixpath.join(folder, shard) for shard in weight_map.values()))
        commit = commit_of(index_local)
        for shard in shards:
            self.fetch(shard, revision=commit)
        return shards


def commit_of(local: Path) -> str | None:
    """The commit of a file at ``.../snapshots/<commit>/<path in repo>`` in the hub cache."""
    for parent in local.parents:
        if parent.parent.name == "snapshots":
            return parent.name
    return None


def _why_unreachable(exc: BaseException) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    cause = exc.__cause__
    return f"the hub at {constants.ENDPOINT} could not be reached" + (f" ({cause})" if cause else "")


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class _Silent(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent
