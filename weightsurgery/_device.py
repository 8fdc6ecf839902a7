"""Device targets: staged values and undo copies live on the host; commit streams each value to the device.

A model on CUDA (or any other non-CPU device) must not pay for a second copy
of itself on the device while a transfer runs. So:

* **Staging** (:func:`staging_value`) leaves every value on the host (CPU), in
  ordinary memory, whatever the target's device: reading, adapters, casts and
  the fallback init all run there. Nothing in staging touches CUDA, so it runs
  the same with or without a GPU. The one exception is a source tensor that is
  already on the target's device with the target's dtype: it is staged as
  itself, which costs no memory at all.
* **Undo copies** (:func:`host_copy`) of a device tensor are taken to the host
  before it is overwritten, so a rollback still restores it bit for bit; so
  are the current values the fallback init keeps for an adapter.
* **Commit** (:class:`HostToDevice`) copies each value into its CUDA tensor
  through a few page-locked (pinned) buffers used in turn: the host copies the
  next value into a free buffer while the previous one is still on its way
  (``non_blocking``), and a buffer is reused only once its copy has finished.
  The device holds the model plus, at most, the temporary that ``copy_`` makes
  for a non-contiguous destination: one tensor.

A sharded target takes the same route: the distributed path stages a DTensor's
local shard alone, as a plain host tensor (:mod:`weightsurgery.distributed.stage`),
and commit writes it into the DTensor's ``to_local()``, a plain tensor on the
mesh's device. A tensor subclass given as such (a DTensor value or undo copy)
is left where it is.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HostToDevice", "copy_into", "staging_value", "host_copy"]

HOST = torch.device("cpu")
IN_FLIGHT = 2
"""Page-locked buffers per commit: one being filled by the host, one on its way to the device."""


def _plain(t: torch.Tensor) -> bool:
    """A plain tensor or parameter (not a DTensor or another subclass, which place their data themselves)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def staging_value(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``tensor`` cast to ``dtype``, on the host: the value commit will copy into a tensor on ``device``.

    No copy is made when ``tensor`` is already on the host (or on ``device``
    itself) with ``dtype``. Never calls into CUDA unless ``tensor`` is on CUDA.

    Example:
        >>> import torch
        >>> value = staging_value(torch.ones(2), torch.float16, torch.device("cuda"))
        >>> value.device, value.dtype
        (device(type='cpu'), torch.float16)
    """
    if not _plain(tensor) or tensor.device == device and tensor.dtype == dtype:
        return tensor.to(dtype=dtype)
    return tensor.to(device=HOST, dtype=dtype)


def host_copy(dst: torch.Tensor) -> torch.Tensor:
    """A copy of ``dst``'s current values (an undo copy, a kept value) on the host.

    A tensor subclass (a DTensor shard) is cloned where it is.

    Example:
        >>> import torch
        >>> w = torch.ones(2)
        >>> backup = host_copy(w)
        >>> backup.device, backup.data_ptr() != w.data_ptr()
        (device(type='cpu'), True)
    """
    if _plain(dst) and dst.device.type not in ("cpu", "meta"):
        return dst.detach().to(device=HOST, copy=True)
    return dst.detach().clone()


def copy_into(dst: torch.Tensor, value: torch.Tensor, *, non_blocking: bool = False) -> None:
    """``dst.copy_(value)`` without autograd, inside inference mode exactly when ``dst`` is an inference tensor."""
    with torch.inference_mode(dst.is_inference()), torch.no_grad():  # in this order: the first sets grad mode
        dst.copy_(value, non_blocking=non_blocking)


class HostToDevice:
    """Copies host values into CUDA tensors through :data:`IN_FLIGHT` page-locked buffers, used in turn.

    Any other pair of devices (CPU into CPU, a value already on the device,
    another accelerator) is a plain :func:`copy_into`. Call :meth:`finish`
    when done: it waits for the copies still on their way and lets the buffers go.

    Example:
        >>> import torch
        >>> dst, stream = torch.zeros(2), HostToDevice()
        >>> stream.copy(dst, torch.ones(2)); stream.finish()
        >>> dst.tolist()
        [1.0, 1.0]
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor | None] = [None] * IN_FLIGHT
        self._events: list[torch.cuda.Event | None] = [None] * IN_FLIGHT
        self._turn = 0

    def copy(self, dst: torch.Tensor, value: torch.Tensor) -> None:
        """Copy ``value`` into ``dst`` (same shape and dtype); on CUDA, it may still be on its way on return."""
        if not (_plain(dst) and dst.device.type == "cuda" and value.device.type == "cpu" and value.numel()):
            copy_into(dst, value)
            return
        i, self._turn = self._turn, (self._turn + 1) % IN_FLIGHT
        event = self._events[i]
        if event is not None:
            event.synchronize()  # the buffer's last copy has reached the device: it can be overwritten
        nbytes = value.numel() * value.element_size()
        buffer = self._buffers[i]
        if buffer is None or buffer.numel() < nbytes:
            self._buffers[i] = buffer = None  # let the small one go before taking a bigger one
            buffer = self._buffers[i] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        pinned = buffer[:nbytes].view(value.dtype).view(value.shape)
        with torch.no_grad():  # a source parameter may require grad
            pinned.copy_(value)
        copy_into(dst, pinned, non_blocking=True)
        event = self._events[i] = torch.cuda.Event()
        event.record(torch.cuda.current_stream(dst.device))

    def finish(self) -> None:
        """Wait for every copy still on its way, then release the page-locked buffers."""
        for event in self._events:
            if event is not None:
                event.synchronize()
        self._buffers = [None] * IN_FLIGHT
        self._events = [None] * IN_FLIGHT
