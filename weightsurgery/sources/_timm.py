"""timm pretrained weights: find the pretrained config, fetch its files, describe them.

Where the weights live comes from timm's own pretrained config, in timm's own
order (``timm.models._builder._resolve_pretrained_source``): a hub repo
(``hf_hub_id``, optionally with ``hf_hub_filename``), else a URL, else a
local file. From a hub repo the safetensors alternative is tried first and the
``.bin`` file only when the hub answers that the safetensors file does not
exist, as timm's ``load_state_dict_from_hf`` does.

The weights are the file as published: timm's per-model ``checkpoint_filter_fn``
(which remaps some original-format checkpoints when timm builds a model) is not
applied here; the matcher handles renamed keys.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from weightsurgery.errors import SourceNotFoundError
from weightsurgery.sources import hub
from weightsurgery.sources import url as url_source
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

__all__ = ["find_cfg", "hub_candidates", "model_names", "open_cfg", "timm_metadata"]

logger = logging.getLogger(__name__)

_BIN = "pytorch_model.bin"
_OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"


def model_names() -> list[str]:
    """Every timm name with pretrained weights: ``arch.tag`` and the bare ``arch``."""
    import timm

    tagged = timm.list_models(pretrained=True)
    return list(dict.fromkeys([*tagged, *(name.partition(".")[0] for name in tagged)]))


def find_cfg(name: str) -> Any | None:
    """timm's pretrained config for ``name`` (``resnet18`` = its default tag), or ``None``.

    Example:
        >>> cfg = find_cfg("resnet18")
        >>> f"{cfg.architecture}.{cfg.tag}", cfg.hf_hub_id
        ('resnet18.a1_in1k', 'timm/resnet18.a1_in1k')
    """
    from timm.models import get_pretrained_cfg, is_model_pretrained

    if not is_model_pretrained(name):
        return None
    return get_pretrained_cfg(name)


def hub_candidates(filename: str | None) -> tuple[str, ...]:
    """The files to try in a timm hub repo: safetensors alternatives first, as timm does.

    Example:
        >>> hub_candidates(None)
        ('model.safetensors', 'pytorch_model.bin')
        >>> hub_candidates("open_clip_pytorch_model.bin")
        ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
    """
    filename = filename or _BIN
    if filename.endswith(".safetensors"):
        return (filename,)
    if filename == _BIN:
        return ("model.safetensors", filename)
    if filename == _OPEN_CLIP_BIN:
        return ("open_clip_model.safetensors", filename)
    if filename.endswith(".bin"):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def open_cfg(cfg: Any, *, key: str | None, weights_only: bool, quiet: bool, details: dict[str, Any]) -> Checkpoint:
    """Fetch (or reuse) the weights a timm pretrained config points to, and open them lazily.

    Args:
        cfg: a ``timm.models.PretrainedCfg``.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        quiet: no progress bars.
        details: origin details to add (the resolution note).

    Returns:
        A checkpoint whose metadata carries ``classifier``, ``first_conv``, ``label_names``,
        ``mean``, ``std``, ``num_classes`` and ``input_size``.

    Raises:
        SourceNotFoundError: the config names no download location, or the files are gone.
        OfflineSourceError: offline and not cached.
    """
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    location = f"timm:{name}"
    details = {"timm_model": name, **details}
    if cfg.hf_hub_id and cfg.source != "local-dir" and not cfg.file:
        hub_id = hub.parse_hub_id(cfg.hf_hub_id)
        files = hub.download(
            hub_id.repo_id, revision=hub_id.revision, candidates=hub_candidates(cfg.hf_hub_filename), quiet=quiet
        )
        ckpt = hub.open_downloaded(
            files, kind=SourceKind.TIMM, location=location, key=key, weights_only=weights_only, details=details
        )
    elif cfg.url or cfg.file:
        ckpt = _open_url_or_file(cfg, location, key=key, weights_only=weights_only, quiet=quiet, details=details)
    else:
        raise SourceNotFoundError(
            f"timm's pretrained config for {name!r} names no hub repo, URL or file to download; "
            "pick another tag (timm.list_pretrained()) or pass the weights file directly",
            source=location,
        )
    ckpt.metadata.update(timm_metadata(cfg))
    return ckpt


def _open_url_or_file(
    cfg: Any, location: str, *, key: str | None, weights_only: bool, quiet: bool, details: dict[str, Any]
) -> Checkpoint:
    from pathlib import Path

    from weightsurgery.sources import files

    sha256 = None
    download = None
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.exists():
            raise SourceNotFoundError(
                f"timm's pretrained config for {location!r} points to {path}, which does not exist; "
                "put the weights file there or pass it directly",
                source=location,
            )
        details = {**details, "file": str(path)}
    else:
        download = url_source.download_to_cache(cfg.url, quiet=quiet, key=key, weights_only=weights_only)
        path, sha256 = download.path, download.sha256
        details = {**details, "url": cfg.url, "downloaded": download.downloaded}
    if download is None:
        ckpt = files.open_path(path, key=key, weights_only=weights_only)
    else:
        ckpt = url_source.open_cached(download, key=key, weights_only=weights_only)
    ckpt.origin = dataclasses.replace(
        ckpt.origin,
        kind=SourceKind.TIMM,
        location=location,
        sha256=sha256,
        details={**ckpt.origin.details, "format": ckpt.origin.kind.value, **details},
    )
    return ckpt


def timm_metadata(cfg: Any) -> dict[str, Any]:
    """``Checkpoint.metadata`` entries from a timm pretrained config.

    ``label_names`` are as timm gives them (ImageNet synset ids such as
    ``n01440764``); the readable names are under ``label_descriptions``.

    Example:
        >>> meta = timm_metadata(find_cfg("resnet18.a1_in1k"))
        >>> meta["classifier"], meta["first_conv"], meta["num_classes"], meta["label_names"][0]
        ('fc', 'conv1', 1000, 'n01440764')
    """
    out: dict[str, Any] = {"timm_model": f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture}
    for field in ("classifier", "first_conv", "mean", "std", "num_classes", "input_size", "label_offset"):
        value = getattr(cfg, field, None)
        if value is not None:
            out[field] = value
    names, descriptions = _labels(cfg)
    if names:
        out["label_names"] = names
    if descriptions:
        out["label_descriptions"] = descriptions
    return out


def _labels(cfg: Any) -> tuple[list[str] | None, list[str] | None]:
    if cfg.label_names:
        return list(cfg.label_names), list(cfg.label_descriptions) if cfg.label_descriptions else None
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(cfg)
    if not subset:
        return None, None
    info = ImageNetInfo(subset)
    return list(info.label_names()), list(info.label_descriptions())
