"""Hugging Face Hub sources: ``hf-hub:org/repo[@revision][/path/in/repo]``.

Every file is fetched with :func:`huggingface_hub.hf_hub_download`, so tokens
(``HF_TOKEN``), the cache (``HF_HOME``, ``HF_HUB_CACHE``), the endpoint
(``HF_ENDPOINT``, e.g. a self-hosted mirror such as ``olah``) and offline mode
(``HF_HUB_OFFLINE=1``) follow huggingface_hub's own settings.

Without a path in the repo, the first of :data:`DEFAULT_FILES` that exists is
taken: ``model.safetensors``, then the sharded
``model.safetensors.index.json`` (and every shard it names), then
``pytorch_model.bin`` and its sharded index. Shards are fetched at the commit
the index came from, so a branch moving mid-download cannot mix two commits.

A fetched file that fails to open as a checkpoint (an HTML page a mirror
served as 200, a file cut short) is evicted from huggingface_hub's cache,
snapshot entry and blob, so the next run downloads it again instead of
reusing the broken copy; a pickle refused as unsafe stays, and the error
says where (:mod:`~weightsurgery.sources._evict`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from weightsurgery.errors import OfflineSourceError, SourceNotFoundError, SourceSpecError
from weightsurgery.sources._evict import open_or_evict
from weightsurgery.sources._hub_fetch import HUB_PREFIX, Fetcher, commit_of, evict
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

__all__ = [
    "DEFAULT_FILES",
    "HUB_PREFIX",
    "HubFiles",
    "HubId",
    "download",
    "open_downloaded",
    "open_hub",
    "parse_hub_id",
]

logger = logging.getLogger(__name__)

DEFAULT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"^(?P<repo>[^/@\s]+(?:/[^/@\s]+)?)(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>\S+))?$")


@dataclasses.dataclass(frozen=True)
class HubId:
    """A parsed ``hf-hub:`` source.

    Attributes:
        repo_id: ``org/repo``.
        revision: the branch, tag or commit asked for; ``None`` means ``main``.
        path: a file in the repo, or ``None`` to take the first of :data:`DEFAULT_FILES`.
    """

    repo_id: str
    revision: str | None = None
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class HubFiles:
    """Files of one repo commit, in the local cache.

    Attributes:
        repo_id: ``org/repo``.
        commit: the 40-hex commit the files come from.
        filename: the file in the repo that the checkpoint opens (a weights file or a shard index).
        local: where that file is in the cache.
        filenames: every file fetched, as paths in the repo.
        paths: where each of ``filenames`` is in the cache.
    """

    repo_id: str
    commit: str | None
    filename: str
    local: Path
    filenames: tuple[str, ...]
    paths: tuple[Path, ...] = ()


def parse_hub_id(src: str, *, revision: str | None = None) -> HubId:
    """Parse ``hf-hub:org/repo[@revision][/path/in/repo]``.

    The first two components are the repo. A revision holding ``/``
    (``refs/pr/1``) cannot be written inline; pass it as ``revision=``.

    Args:
        src: the source string, with or without the ``hf-hub:`` prefix.
        revision: a revision given separately; it must agree with an inline one.

    Returns:
        The repo, revision and path in the repo.

    Raises:
        SourceSpecError: the string names no repo, or two different revisions.

    Example:
        >>> parse_hub_id("hf-hub:timm/resnet18.a1_in1k@main/model.safetensors")
        HubId(repo_id='timm/resnet18.a1_in1k', revision='main', path='model.safetensors')
    """
    body = src[len(HUB_PREFIX) :] if src.startswith(HUB_PREFIX) else src
    match = _HUB_ID.match(body)
    if match is None:
        raise SourceSpecError(
            f"cannot read {src!r} as a hub id; write 'hf-hub:org/repo', 'hf-hub:org/repo@revision' "
            "or 'hf-hub:org/repo/path/in/repo.safetensors'",
            source=src,
        )
    inline = match.group("revision")
    if inline and revision and inline != revision:
        raise SourceSpecError(
            f"{src!r} names revision {inline!r} but revision={revision!r} was also given; keep one of them",
            source=src,
        )
    return HubId(match.group("repo"), inline or revision, match.group("path"))


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    candidates: tuple[str, ...] = DEFAULT_FILES,
    quiet: bool = False,
) -> HubFiles:
    """Fetch the first of ``candidates`` that the repo has, with its shards.

    Args:
        repo_id: ``org/repo``.
        revision: branch, tag or commit; ``None`` means ``main``.
        candidates: files to try in order; a name ending in ``.index.json`` also fetches its shards.
        quiet: no progress bars.

    Returns:
        The files, and the commit they came from.

    Raises:
        SourceNotFoundError: no such repo or revision, or none of the candidates exists.
        OfflineSourceError: offline (or the hub is unreachable) and none of the candidates is cached.

    Example:
        >>> files = download("timm/resnet18.a1_in1k")  # doctest: +SKIP
        >>> files.filename  # doctest: +SKIP
        'model.safetensors'
    """
    fetcher = Fetcher(repo_id, revision=revision, quiet=quiet)
    for filename in candidates:
        local = fetcher.fetch(filename, missing_ok=len(candidates) > 1)
        if local is None:
            continue
        filenames, paths = (filename,), (local,)
        if filename.endswith(".index.json"):
            shards = fetcher.fetch_shards(filename, local)
            filenames += tuple(shard for shard, _ in shards)
            paths += tuple(path for _, path in shards)
        return HubFiles(repo_id, commit_of(local), filename, local, filenames, paths)
    where = f"{repo_id}@{revision or 'main'}"
    if fetcher.unreachable is not None:
        raise OfflineSourceError(
            f"none of {', '.join(candidates)} from {where} is in the local cache and {fetcher.unreachable}; "
            f"fetch it once online, e.g. `hf download {repo_id} {candidates[0]}`"
            + (f" --revision {revision}" if revision else ""),
            source=f"{HUB_PREFIX}{where}",
        )
    raise SourceNotFoundError(
        f"{where} has none of {', '.join(candidates)}; name the weights file: 'hf-hub:{repo_id}/path/in/repo'",
        source=f"{HUB_PREFIX}{where}",
    )


def open_hub(src: str, *, key: str | None, weights_only: bool, revision: str | None, quiet: bool) -> Checkpoint:
    """Resolve ``hf-hub:org/repo[@revision][/path]`` to a lazy :class:`Checkpoint`.

    Args:
        src: the hub source string.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        revision: branch, tag or commit (also writable inline as ``@revision``).
        quiet: no progress bars.

    Returns:
        A checkpoint whose ``origin.revision`` is the resolved 40-hex commit.

    Raises:
        SourceSpecError: ``src`` does not parse, or names two revisions.
        SourceNotFoundError: the repo, revision or file does not exist.
        OfflineSourceError: offline and not cached.

    Example:
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve("hf-hub:timm/resnet18.a1_in1k")  # doctest: +SKIP
        >>> len(ckpt.origin.revision)  # doctest: +SKIP
        40
    """
    hub_id = parse_hub_id(src, revision=revision)
    candidates = (hub_id.path,) if hub_id.path else DEFAULT_FILES
    files = download(hub_id.repo_id, revision=hub_id.revision, candidates=candidates, quiet=quiet)
    return open_downloaded(
        files,
        kind=SourceKind.HUB,
        location=f"{HUB_PREFIX}{hub_id.repo_id}",
        key=key,
        weights_only=weights_only,
        details={"revision_requested": hub_id.revision or "main"},
    )


def open_downloaded(
    files: HubFiles,
    *,
    kind: SourceKind,
    location: str,
    key: str | None,
    weights_only: bool,
    details: dict[str, Any],
) -> Checkpoint:
    """Open fetched hub files and stamp the origin with the repo and commit.

    Args:
        files: what :func:`download` returned.
        kind: the origin kind (``HUB``, or ``TIMM`` for a registry name served from the hub).
        location: the origin location.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        details: origin details to add.

    Returns:
        The checkpoint.

    Raises:
        CorruptCheckpointError: a fetched file is broken; it was evicted from the hub cache.
        UnsafeCheckpointError: a pickle needs code; it stays in the cache, and the message says where.
    """
    from weightsurgery.sources import files as local_files

    ckpt = open_or_evict(
        lambda: local_files.open_path(files.local, key=key, weights_only=weights_only),
        files.paths or (files.local,),
        evict=evict,
        came_from=f"hub repo {files.repo_id}" + (f" at commit {files.commit}" if files.commit else ""),
    )
    ckpt.origin = dataclasses.replace(
        ckpt.origin,
        kind=kind,
        location=location,
        revision=files.commit,
        details={
            **ckpt.origin.details,
            "format": ckpt.origin.kind.value,
            "repo_id": files.repo_id,
            "files_in_repo": list(files.filenames),
            **details,
        },
    )
    return ckpt
