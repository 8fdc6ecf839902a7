"""Reading an input's tensors for ``convert`` and ``diff``: what the input gets wrong is named, never a crash.

* An allocation an input asks for and the machine refuses becomes
  :class:`~weightsurgery.errors.InputMemoryError`, naming the file and the key.
  Python reports it as :class:`MemoryError`; torch's CPU allocator as a
``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"), and CUDA as
``torch.OutOfMemoryError``. Either way the input is too big for the memory
this process may use: a user's problem to name, not a bug.
* A tensor stored on the meta device holds no data:
  :class:`~weightsurgery.errors.CorruptCheckpointError`, naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from typing import TYPE_CHECKING

from weightsurgery.errors import CorruptCheckpointError, InputMemoryError, WeightSurgeryError

if TYPE_CHECKING:
    import torch

    from weightsurgery.sources import Checkpoint

__all__ = ["input_memory", "is_out_of_memory", "load_data"]


def load_data(ckpt: Checkpoint, key: str) -> torch.Tensor:
    """``ckpt.load(key)``, refusing a tensor without data and naming a refused allocation.

    Raises:
        InputMemoryError: the tensor does not fit in the memory this process may allocate.
        CorruptCheckpointError: the tensor is stored on the meta device.

    Example:
        >>> import torch
        >>> from weightsurgery.sources import resolve
        >>> with resolve({"w": torch.empty(2, device="meta")}) as ckpt:
        ...     load_data(ckpt, "w")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.CorruptCheckpointError: <mapping>: tensor 'w' is stored on the meta device and holds no data; save the model after loading or initializing its weights
    """
    location = ckpt.origin.location
    with input_memory(location, key):
        tensor = ckpt.load(key)
    if tensor.is_meta:
        raise CorruptCheckpointError(
            f"{location}: tensor {key!r} is stored on the meta device and holds no data; "
            "save the model after loading or initializing its weights",
            source=location,
        )
    return tensor


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a refused allocation.

    Example:
        >>> is_out_of_memory(MemoryError()), is_out_of_memory(RuntimeError("boom"))
        (True, False)
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


@contextlib.contextmanager
def input_memory(path: object, key: str | None = None, *, doing: str = "read") -> Iterator[None]:
    """Turn a refused allocation inside the block into :class:`InputMemoryError` naming ``path`` and ``key``.

    Example:
        >>> with input_memory("big.safetensors", "w"):
        ...     raise MemoryError()
        Traceback (most recent call last):
        ...
        weightsurgery.errors.InputMemoryError: not enough memory to read tensor 'w' of big.safetensors (MemoryError); free memory or raise the process's limit (ulimit -v), or use a machine with more
    """
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, WeightSurgeryError) or not is_out_of_memory(exc):
            raise
        what = f"tensor {key!r} of {path}" if key is not None else str(path)
        detail = str(exc).splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise InputMemoryError(
            f"not enough memory to {doing} {what} ({detail}); free memory or raise the process's limit "
            "(ulimit -v), or use a machine with more",
            path=path, key=key,
        ) from None
