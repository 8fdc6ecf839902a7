"""The lazy checkpoint every source resolves to.

A :class:`Checkpoint` knows its keys, shapes and dtypes up front and reads a
tensor's data only when :meth:`Checkpoint.load` is called, at apply time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Checkpoint", "Origin", "SourceKind", "TensorMeta"]


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorMeta:
        return cls(tuple(tensor.shape), tensor.dtype)


class SourceKind(str, enum.Enum):
    """Where a checkpoint came from."""

    SAFETENSORS = "safetensors"
    SHARDED = "sharded-safetensors"
    PICKLE = "torch-pickle"
    FOLDER = "folder"
    STATE_DICT = "state-dict"
    MODULE = "module"
    HUB = "hf-hub"
    URL = "url"
    TORCHVISION = "torchvision"
    TIMM = "timm"
    DCP = "dcp"
    KERAS = "keras"
    FLAX = "flax"
    ONNX = "onnx"
    GGUF = "gguf"


@dataclass(frozen=True)
class Origin:
    """What a checkpoint was resolved from, for the report.

    Attributes:
        kind: the kind of source.
        location: the path, URL, repo id or registry name.
        files: local files the tensors are read from.
        container: the path taken through a nested checkpoint, e.g. ``("state_dict",)``.
        revision: the hub commit, when resolved from the hub.
        sha256: the verified hash, when one was checked.
        details: anything else worth reporting (registry tag, resolution note).
    """

    kind: SourceKind
    location: str
    files: tuple[str, ...] = ()
    container: tuple[str, ...] = ()
    revision: str | None = None
    sha256: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line naming the source, e.g. ``torch-pickle ckpt.pth [state_dict → model]``."""
        text = f"{self.kind.value} {self.location}"
        if self.revision:
            text += f"@{self.revision[:12]}"
        if self.container:
            text += " [" + " → ".join(self.container) + "]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "location": self.location,
            "files": list(self.files),
            "container": list(self.container),
            "revision": self.revision,
            "sha256": self.sha256,
            "details": {k: _jsonable(v) for k, v in self.details.items()},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class Checkpoint:
    """A lazy, read-only view of a source's tensors.

    Args:
        metas: key -> shape and dtype, in the order the source stores them.
        loader: reads one key's tensor; called only at apply time.
        origin: what the checkpoint was resolved from.
        metadata: free-form metadata (safetensors header metadata, label names,
            ``"classifier"``/``"first_conv"`` names from a registry...).
            ``"tied"`` lists the groups of keys that name one shared tensor
            (:mod:`weightsurgery.sources.shared`); a key that shares its tensor
            with a key a plan reads is used, not unused.
        closer: releases file handles; called by :meth:`close`.
        owned: ``loader`` returns freshly allocated tensors that share memory with
            nothing (not a memory-mapped file, not a caller's tensor), so apply
            may put them into a model without another copy.
        locate: ``key -> (header, stored name)`` for keys whose bytes lie in a
            safetensors file (the open :class:`~weightsurgery.sources.safetensors_file.SafetensorsHeader`
            and the name the key is stored under there), so a sharded target can
            read a region by byte range (:meth:`locate`).

    Example:
        >>> import torch
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve({"w": torch.ones(2, 3)})
        >>> ckpt.metas["w"].shape
        (2, 3)
        >>> ckpt.load("w").sum().item()
        6.0
    """

    def __init__(
        self,
        metas: Mapping[str, TensorMeta],
        loader: Callable[[str], torch.Tensor],
        origin: Origin,
        *,
        metadata: Mapping[str, Any] | None = None,
        closer: Callable[[], None] | None = None,
        owned: bool = False,
        locate: Callable[[str], tuple[Any, str]] | None = None,
    ) -> None:
        self.metas: Mapping[str, TensorMeta] = dict(metas)
        self._loader = loader
        self.origin = origin
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._closer = closer
        self.owned = owned
        self._locate = locate
        self._closed = False

    def keys(self) -> list[str]:
        return list(self.metas)

    def __contains__(self, key: object) -> bool:
        return key in self.metas

    def __len__(self) -> int:
        return len(self.metas)

    def __iter__(self) -> Iterator[str]:
        return iter(self.metas)

    def load(self, key: str) -> torch.Tensor:
        """Read one tensor. Unless ``owned``, it may be the caller's own tensor: copy it before it goes into a model."""
        if key not in self.metas:
            raise KeyError(f"{key!r} is not in {self.origin.describe()}")
        if self._closed:
            raise ValueError(f"checkpoint {self.origin.describe()} is closed; resolve the source again to read it")
        return self._loader(key)

    def locate(self, key: str) -> tuple[Any, str] | None:
        """The open safetensors header holding ``key``'s bytes and its name there; ``None`` if not in one."""
        if self._locate is None or key not in self.metas or self._closed:
            return None
        return self._locate(key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Read every tensor (convenience for small checkpoints and tests)."""
        return {k: self.load(k) for k in self.metas}

    @property
    def num_params(self) -> int:
        return sum(m.numel for m in self.metas.values())

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.metas.values())

    def close(self) -> None:
        """Release file handles; later :meth:`load` calls raise."""
        self._closed = True
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.origin.describe()}, {len(self)} tensors)"
