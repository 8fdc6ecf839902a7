"""Convert checkpoints between torch pickles and safetensors, keeping shared tensors and metadata.

Safetensors stores each tensor's bytes once and refuses tensors that share
memory. Two rules bridge that:

* **Shared tensors.** Names that view *the same* tensor (tied weights: same
  storage, offset, shape and strides; :mod:`weightsurgery.sources.shared`)
  are written once; each dropped name is recorded in the metadata as
  ``{alias: kept_name}``, the convention of
  ``safetensors.torch.save_model``. Writing a torch pickle restores such
  aliases as one shared tensor. Views that overlap only partly (a slice of
  another tensor) are cloned, so each is written whole; they come back as
  independent tensors.
* **Metadata.** A safetensors header holds ``{str: str}``. A torch pickle
  written here is a flat state dict, plus a ``"__metadata__"`` entry (a
  ``{str: str}`` dict, like the safetensors header's own ``__metadata__``)
  only when there is metadata worth keeping: the ``{"format": "pt"}`` marker
  and the alias entries are structural and not repeated. Pop it before
  ``model.load_state_dict``. Reading a nested training checkpoint keeps its
  top-level scalars (``epoch``, ``arch``); non-string values are JSON-encoded.
* **Module extra state** (``<module>._extra_state``, what ``get_extra_state``
  returns) is written back into a torch pickle; safetensors cannot hold it, so
  it is left out of a ``.safetensors`` output with a logged warning.

Every file is written atomically (:class:`weightsurgery._io.AtomicOutputs`): the
destination's folder must exist, and without ``overwrite`` an existing
destination is refused, even one that appears while the file is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError

from weightsurgery._io import AtomicOutputs, check_destination
from weightsurgery._reading import load_data
from weightsurgery.errors import OutputWriteError, WeightSurgeryError
from weightsurgery.sources import Checkpoint, resolve
from weightsurgery.sources.shared import alias_map, same_view

__all__ = [
    "METADATA_KEY",
    "Conversion",
    "Format",
    "convert_checkpoint",
    "output_format",
    "write_safetensors",
    "write_torch",
]

logger = logging.getLogger(__name__)

Format = Literal["safetensors", "torch"]

_FLAG = "overwrite=True (--force)"

METADATA_KEY = "__metadata__"
"""The state-dict entry that carries metadata in a torch pickle written here."""

_SUFFIXES: dict[str, Format] = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
}


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` wrote.

    Attributes:
        source: the source, described (``torch-pickle model.pth [state_dict]``).
        output: the file written.
        format: ``"safetensors"`` or ``"torch"``.
        num_tensors: distinct tensors written (aliases not counted).
        aliases: alias key -> kept key, for tensors written once under several names.
        cloned: keys whose memory overlapped another tensor's and were copied.
        metadata: the metadata written.
    """

    source: str
    output: Path
    format: Format
    num_tensors: int
    aliases: Mapping[str, str] = field(default_factory=dict)
    cloned: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": str(self.output),
            "format": self.format,
            "num_tensors": self.num_tensors,
            "aliases": dict(self.aliases),
            "cloned": list(self.cloned),
            "metadata": dict(self.metadata),
        }


def output_format(path: str | os.PathLike[str]) -> Format:
    """The format a file name asks for, from its suffix.

    Raises:
        ValueError: the suffix is none of ``.safetensors .pt .pth .bin .ckpt``.

    Example:
        >>> output_format("model.safetensors"), output_format("model.pth")
        ('safetensors', 'torch')
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"cannot tell the output format of {os.fspath(path)!r} from its suffix {suffix!r}; "
            f"end it with one of {', '.join(_SUFFIXES)}"
        )
    return _SUFFIXES[suffix]


def convert_checkpoint(
    src: Any,
    dst: str | os.PathLike[str],
    *,
    key: str | None = None,
    weights_only: bool = True,
    revision: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Conversion:
    """Write the state dict of ``src`` to ``dst`` as safetensors or a torch pickle (by suffix).

    Args:
        src: anything :func:`weightsurgery.sources.resolve` accepts: a path,
            URL, ``hf-hub:`` id, registry name, state dict or module.
        dst: the output file; ``.safetensors`` writes safetensors, ``.pt``,
            ``.pth``, ``.bin`` and ``.ckpt`` write a torch pickle.
        key: the container to take from a nested checkpoint.
        weights_only: refuse pickles that need code (the default).
        revision: hub revision for ``hf-hub:`` sources.
        overwrite: replace ``dst`` if it exists.
        quiet: no download progress bars.
        progress: ``progress(done, total)`` as tensors are read.

    Returns:
        A :class:`Conversion` describing what was written.

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is false (checked first, and again
            at the final rename: a file that appears meanwhile is not replaced).
        OutputWriteError: the folder of ``dst`` does not exist, or the write failed.
        ValueError: the suffix of ``dst`` names no known format.
        SourceError: ``src`` cannot be resolved or read (subclasses say why).

    Example:
        >>> import tempfile, pathlib, torch
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> w = torch.ones(2, 2)
        >>> torch.save({"embed.weight": w, "head.weight": w}, d / "tied.pth")
        >>> done = convert_checkpoint(d / "tied.pth", d / "tied.safetensors")
        >>> done.num_tensors, dict(done.aliases)
        (1, {'head.weight': 'embed.weight'})
        >>> back = convert_checkpoint(d / "tied.safetensors", d / "back.pth")
        >>> sd = torch.load(d / "back.pth", weights_only=True)
        >>> sd["head.weight"] is sd["embed.weight"]
        True
    """
    dst = Path(dst)
    fmt = output_format(dst)
    check_destination(dst, overwrite=overwrite, flag=_FLAG)
    with resolve(src, key=key, weights_only=weights_only, revision=revision, quiet=quiet) as ckpt:
        tensors = _read_all(ckpt, progress)  # names that share a tensor come back as one tensor
        metadata = _source_metadata(ckpt)
        extra = dict(ckpt.metadata.get("extra_state", {}))  # modules' get_extra_state(), not tensors
        if fmt == "safetensors":
            if extra:
                logger.warning("%s cannot hold module extra state; not written: %s", dst, ", ".join(extra))
            aliases, cloned = write_safetensors(tensors, dst, metadata=metadata, overwrite=overwrite)
            metadata = {"format": "pt", **aliases, **metadata}  # the header as written
            written = len(tensors) - len(aliases)
        else:
            aliases = alias_map(ckpt.metadata.get("tied", ()))
            cloned = ()
            metadata = {k: v for k, v in metadata.items() if (k, v) != ("format", "pt")}
            write_torch({**tensors, **extra}, dst, metadata=metadata, overwrite=overwrite)  # extra state back where torch keeps it
            written = len(tensors)
        logger.info("wrote %d tensors from %s to %s", written, ckpt.origin.describe(), dst)
        return Conversion(ckpt.origin.describe(), dst, fmt, written, aliases, cloned, metadata)


def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = True,
    outputs: AtomicOutputs | None = None,
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Write ``tensors`` to a safetensors file atomically, handling shared memory.

    Names that view the same tensor are written once and recorded in the
    metadata as ``{alias: kept}``; partly overlapping views are cloned;
    non-contiguous tensors are made contiguous. ``metadata`` entries win over
    alias entries of the same name.

    Args:
        tensors: name -> tensor, e.g. ``model.state_dict()``.
        path: the output file.
        metadata: ``{str: str}`` for the header; ``{"format": "pt"}`` is added
            unless a ``format`` is given.
        overwrite: replace an existing ``path``; without it an existing file is refused.
        outputs: write as one file of this group (it appears when the group's
            ``with`` block ends, together with the group's other files).

    Returns:
        ``(aliases, cloned)``: alias name -> kept name, and the names that were cloned.

    Raises:
        ValueError: a tensor is on the meta device (it holds no data to write).
        OutputWriteError: the write failed part-way (a full disk), or the folder of ``path``
            does not exist; ``path`` is left as it was.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors import safe_open
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
        >>> w = torch.zeros(3, 3)
        >>> write_safetensors({"a": w, "b": w, "c": w[0]}, p)
        ({'b': 'a'}, ('c',))
        >>> with safe_open(str(p), "pt") as f:
        ...     sorted(f.keys()), f.metadata()["b"]
        (['a', 'c'], 'a')
    """
    unique, aliases, cloned = _dedupe(tensors)
    header = {"format": "pt", **aliases, **dict(metadata or {})}
    with _writing(path, overwrite=overwrite, outputs=outputs) as tmp:
        from safetensors.torch import save_file  # imported here: `import weightsurgery` stays light

        save_file(unique, str(tmp), metadata=header)
    if cloned:
        logger.info("copied %s: they overlapped another tensor's memory", ", ".join(cloned))
    return aliases, cloned


def write_torch(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = True,
    outputs: AtomicOutputs | None = None,
) -> None:
    """Write a flat state dict with ``torch.save``, atomically.

    Tensors that share memory stay shared (``torch.save`` keeps storage
    sharing). Non-empty ``metadata`` is stored under :data:`METADATA_KEY`.
    ``overwrite`` and ``outputs`` are those of :func:`write_safetensors`.

    Raises:
        OutputWriteError: the write failed part-way (a full disk), or the folder of ``path``
            does not exist; ``path`` is left as it was.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.pth"
        >>> write_torch({"w": torch.ones(1)}, p, metadata={"arch": "mlp"})
        >>> torch.load(p, weights_only=True)["__metadata__"]
        {'arch': 'mlp'}
    """
    state: dict[str, Any] = dict(tensors)
    if metadata:
        state[METADATA_KEY] = dict(metadata)
    with _writing(path, overwrite=overwrite, outputs=outputs) as tmp:
        torch.save(state, tmp)


@contextlib.contextmanager
def _writing(path: str | os.PathLike[str], *, overwrite: bool, outputs: AtomicOutputs | None) -> Iterator[Path]:
    """A temporary file for ``path`` in ``outputs`` (or in a group of its own, committed on exit).

    safetensors and ``torch.save`` report a full disk as their own exception
    types (``SafetensorError``, ``RuntimeError``); they become
    :class:`OutputWriteError`, naming the file.
    """
    with contextlib.ExitStack() as stack:
        group = outputs if outputs is not None else stack.enter_context(AtomicOutputs(overwrite=overwrite, flag=_FLAG))
        tmp = group.stage(path)
        try:
            yield tmp
        except (OSError, RuntimeError, SafetensorError) as exc:
            if isinstance(exc, WeightSurgeryError):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OutputWriteError(
                f"could not write {os.fspath(path)} ({reason}); it was left as it was. "
                "Check the free disk space, the file-size limit (ulimit -f) and the folder's permissions",
                path=path,
            ) from exc


def _read_all(ckpt: Checkpoint, progress: Callable[[int, int], None] | None) -> dict[str, torch.Tensor]:
    """Every tensor, read once per shared tensor: the names of a ``metadata["tied"]`` group get one tensor."""
    canonical = alias_map(ckpt.metadata.get("tied", ()))
    tensors: dict[str, torch.Tensor] = {}
    total = len(ckpt)
    undecided = ckpt.metadata.get("undecided") or {}  # another framework's tensors of unknown layout
    if undecided:
        logger.warning("%s: %d tensors of undecided layout are not written (%s: %s)", ckpt.origin.describe(),
                       len(undecided), next(iter(undecided)), next(iter(undecided.values())))
    for i, name in enumerate(ckpt.keys()):
        if name in undecided:
            continue
        kept = canonical.get(name)
        if kept in tensors:
            tensors[name] = tensors[kept]
        else:
            tensor = load_data(ckpt, name)
            tensors[name] = tensor
        if progress is not None:
            progress(i + 1, total)
    return tensors


def _source_metadata(ckpt: Checkpoint) -> dict[str, str]:
    """The checkpoint's metadata as ``{str: str}``: header entries and scalars flat, the rest JSON-encoded.

    ``"tied"`` (groups of names sharing a tensor) and a header's ``{alias: kept}``
    entries are left out: the writers rediscover sharing from the tensors themselves.
    """
    aliases = alias_map(ckpt.metadata.get("tied", ()))
    out: dict[str, str] = {}
    for name, value in ckpt.metadata.items():
        if name in ("tied", "extra_state"):
            continue
        if name in ("safetensors", "file_metadata", "scalars") and isinstance(value, Mapping):
            out.update({
                str(k): v if isinstance(v, str) else json.dumps(v, default=str)
                for k, v in value.items()
                if not (k in aliases and aliases[k] == aliases.get(v, v))
            })
        elif value not in (None, {}, [], ()):
            out[str(name)] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _dedupe(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], tuple[str, ...]]:
    """Split tensors into ones safe to write, aliases ``{alias: kept}``, and names that had to be cloned."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    cloned: list[str] = []
    written: dict[tuple[str, int], list[str]] = {}  # storage -> names written from it
    for name, tensor in tensors.items():
        if tensor.device.type == "meta":
            raise ValueError(
                f"tensor {name!r} is on the meta device and holds no data; materialize it "
                "(load or initialize it) before saving"
            )
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0:
            unique[name] = tensor.contiguous()
            continue
        where = (str(tensor.device), storage.data_ptr())
        earlier = written.setdefault(where, [])
        same = next((k for k in earlier if same_view(tensors[k], tensor)), None)
        if same is not None:
            aliases[name] = same
        elif earlier:
            unique[name] = tensor.clone(memory_format=torch.contiguous_format)
            cloned.append(name)
        else:
            unique[name] = tensor.contiguous()
            earlier.append(name)
    return unique, aliases, tuple(cloned)
