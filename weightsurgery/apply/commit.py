"""Commit: write the staged tensors into the module as one transaction.

Everything that can fail has been checked before this runs (:mod:`.validate`),
but an interrupt (Ctrl-C), an out-of-memory error or a raising
``set_extra_state`` can still land in the middle. :class:`Commit` records how
to undo each change *before* making it, and :func:`commit` undoes all of them,
newest first, on any exception, ``KeyboardInterrupt`` included. The model is
then bit-for-bit as it was: values, ``requires_grad`` flags, module extra
state, and the very parameter objects its modules held.

Every change goes through one method of :class:`Commit`:

* :meth:`Commit.write`: a staged value copied in place into a materialized
  target tensor (inside inference mode for an inference tensor). This is the
  one place a staged tensor reaches a real destination. A value staged
  on the host for a CUDA tensor goes through page-locked memory, one tensor at
  a time, and the undo copy of a device tensor is kept on the host
  (:mod:`weightsurgery._device`): the device never holds a second copy of the model.
  A DTensor target whose staged value is its local shard alone (the distributed
  path stages it so) is written the same way, into its ``to_local()``.
* :meth:`Commit.replace`: a new tensor put into a module's slot, for a target
  tensor on ``meta`` (a factory-built target); undoing puts the old object back.
* :meth:`Commit.set_requires_grad` (``freeze=True``) and
  :meth:`Commit.set_extra_state`.

A second Ctrl-C during the undo is held until the undo is finished.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from weightsurgery import _device
from weightsurgery.errors import ModuleProtocolError
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.shared import tensor_identity

__all__ = ["Commit", "PreviousExtraState", "commit", "previous_extra_states"]

logger = logging.getLogger(__name__)

PreviousExtraState = Callable[[], None] | None
"""Puts a module's extra state back as it was; ``None`` where it cannot (no ``get_extra_state``)."""


class Commit:
    """The changes made to a module so far, each with its undo.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> before = lin.weight.detach().clone()
        >>> tx = Commit()
        >>> tx.write(lin.weight, torch.zeros(2, 2))
        >>> tx.set_requires_grad(lin.weight, False)
        >>> tx.rollback()  # the undos that failed: none
        []
        >>> torch.equal(lin.weight, before), lin.weight.requires_grad
        (True, True)
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._to_device = _device.HostToDevice()

    def write(self, dst: torch.Tensor, value: torch.Tensor) -> None:
        """Copy ``value`` into ``dst`` in place (``dst`` keeps its identity, storage and views).

        The undo copy of a tensor on a device is taken to the host. Into a CUDA
        tensor the copy may still be on its way on return: :meth:`finish` waits for it.
        A DTensor ``dst`` takes a plain ``value`` (its local shard's) into its local tensor.
        """
        if _shard_value(dst, value):
            with torch.no_grad():  # to_local() is then the DTensor's own local tensor (a view, for a parameter)
                dst = dst.to_local()  # type: ignore[attr-defined]
        backup = _device.host_copy(dst)
        self._undo.append(lambda: _device.copy_into(dst, backup))
        self._to_device.copy(dst, value)

    def finish(self) -> None:
        """Wait for the copies to a device still on their way and release their page-locked buffers."""
        self._to_device.finish()

    def replace(self, owner: nn.Module, name: str, is_buffer: bool, new: torch.Tensor) -> None:
        """Put ``new`` into ``owner``'s parameter or buffer slot ``name``."""
        table = owner._buffers if is_buffer else owner._parameters
        old = table[name]
        self._undo.append(lambda: table.__setitem__(name, old))
        table[name] = new  # type: ignore[assignment]

    def set_requires_grad(self, tensor: torch.Tensor, flag: bool) -> None:
        """Set ``tensor.requires_grad``."""
        old = tensor.requires_grad
        self._undo.append(lambda: _requires_grad(tensor, old))
        _requires_grad(tensor, flag)

    def set_extra_state(self, owner: nn.Module, path: str, value: Any, previous: PreviousExtraState) -> None:
        """Call ``owner.set_extra_state(value)``; ``previous`` restores what it had.

        Raises:
            ModuleProtocolError: ``set_extra_state`` raised; the message names the module.
        """
        try:
            owner.set_extra_state(value)
        except Exception as exc:
            if previous is not None:  # it may have changed part of its state before raising
                try:
                    previous()
                except Exception as again:  # it refuses its own old state too: it kept it, or says so here
                    logger.debug("module %r refused its previous extra state as well: %r", path, again)
            raise ModuleProtocolError(
                f"module {path or '<root>'!r} ({type(owner).__name__}) refused the source's extra state in "
                f"set_extra_state ({type(exc).__name__}: {exc}); nothing was changed. Give the source no extra "
                "state for it, or fix set_extra_state",
                module=path or "<root>",
            ) from exc
        if previous is not None:
            self._undo.append(previous)

    def call(self, action: Callable[[], None], *, undo: Callable[[], None]) -> None:
        """Run ``action``; a rollback runs ``undo`` at this point."""
        self._undo.append(undo)
        action()

    def rollback(self) -> list[str]:
        """Undo every change, newest first (a Ctrl-C meanwhile waits until it is done).

        Returns:
            One line per undo that raised (the others still ran); normally none.
        """
        failed: list[str] = []
        with _sigint_held():
            while self._undo:
                undo = self._undo.pop()
                try:
                    undo()
                except Exception as exc:  # keep undoing the rest
                    failed.append(f"{type(exc).__name__}: {exc}")
        return failed


def previous_extra_states(module: nn.Module, paths: Iterator[str] | list[str]) -> dict[str, PreviousExtraState]:
    """For each module path, a function that sets the module's current extra state back, if it can be read.

    Taken before the commit starts. A module whose class does not override
    ``get_extra_state`` (or whose ``get_extra_state`` raises) cannot be put
    back: :func:`commit` sets those last.
    """
    out: dict[str, PreviousExtraState] = {}
    for path in paths:
        owner = module.get_submodule(path)
        out[path] = None
        if type(owner).get_extra_state is nn.Module.get_extra_state:
            continue
        try:
            state = copy.deepcopy(owner.get_extra_state())
        except Exception as exc:  # the module's own code
            logger.debug("cannot read the extra state of %r to restore it on failure: %r", path, exc)
            continue
        out[path] = lambda owner=owner, state=state: owner.set_extra_state(copy.deepcopy(state))
    return out


def commit(
    module: nn.Module,
    target: TargetSpec,
    current: Mapping[str, torch.Tensor],
    staged: dict[str, torch.Tensor],
    *,
    extra: Mapping[str, Any] = {},  # noqa: B006 - read only
    previous_extra: Mapping[str, PreviousExtraState] = {},  # noqa: B006 - read only
    freeze: list[str] | None = None,
    after_tensors: Callable[[], None] | None = None,
    place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[str, ...]:
    """Write ``staged`` into ``module``, then its extra state, then freeze; all of it or nothing.

    ``staged`` is emptied as it is written, so a staged tensor's memory goes
    as soon as it is in the model (its undo keeps one copy of the old value).

    Args:
        module: the target.
        target: its spec.
        current: target key -> the module's tensor before the commit.
        staged: target key -> the value to write (same shape, dtype and device).
        extra: module path -> the extra state to set.
        previous_extra: module path -> how to put its extra state back (:func:`previous_extra_states`).
        freeze: parameter keys to set ``requires_grad=False`` on.
        after_tensors: called once the tensors are written, and again after a
            rollback that undid them (FSDP2 re-reads its replaced parameters).
        place: ``(value, dst) -> tensor`` that a ``meta`` target ``dst`` is replaced by,
            called one tensor at a time (the distributed path makes its DTensor here,
            on the mesh's device); default: ``value`` itself.

    Returns:
        The keys frozen.

    Raises:
        ModuleProtocolError: a ``set_extra_state`` raised. On this or any other
            exception, ``KeyboardInterrupt`` included, every change is undone first.
    """
    tx = Commit()
    try:
        _write_tensors(tx, module, current, staged, place)
        if after_tensors is not None:
            tx.call(after_tensors, undo=after_tensors)
        for path in sorted(extra, key=lambda p: previous_extra.get(p) is None):  # those we cannot undo last
            tx.set_extra_state(module.get_submodule(path), path, extra[path], previous_extra.get(path))
        frozen: list[str] = []
        if freeze:
            now = current_tensors(module, target)
            for key in freeze:
                if isinstance(now[key], nn.Parameter):
                    tx.set_requires_grad(now[key], False)
                    frozen.append(key)
    except BaseException as exc:
        failed = tx.rollback()
        if failed:
            note = f"weightsurgery could not undo {len(failed)} change(s) while rolling back: " + "; ".join(failed)
            if hasattr(exc, "add_note"):
                exc.add_note(note)
            else:  # pragma: no cover - Python 3.10
                logger.warning(note)
        raise
    finally:
        tx.finish()
    return tuple(frozen)


def current_tensors(module: nn.Module, target: TargetSpec) -> dict[str, torch.Tensor]:
    """Target key -> the tensor object the module holds there now."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(module.named_modules(remove_duplicate=False))  # one walk, not a get_submodule per key
    for key, t in target.tensors.items():
        owner = modules[t.module]
        out[key] = owner._buffers[t.name] if t.is_buffer else owner._parameters[t.name]  # type: ignore[assignment]
    return out


def _write_tensors(
    tx: Commit, module: nn.Module, current: Mapping[str, torch.Tensor], staged: dict[str, torch.Tensor],
    place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """In place where the target is materialized, by replacement on ``meta``.

    On ``meta``, every slot that held the same tensor (tied by identity, or two
    parameters over one view: :func:`~weightsurgery.sources.shared.tensor_identity`)
    gets the same new data; each original object becomes one new object, so
    ties stay ties and views stay views.
    """
    owners: dict[Hashable, list[tuple[nn.Module, str, bool, torch.Tensor]]] = defaultdict(list)
    if any(current[k].is_meta for k in staged):
        for mod in module.modules():
            for is_buffer, table in ((False, mod._parameters), (True, mod._buffers)):
                for name, t in table.items():
                    if t is not None and t.is_meta:
                        owners[tensor_identity(t)].append((mod, name, is_buffer, t))
    while staged:
        key = next(iter(staged))
        value = staged.pop(key)
        dst = current[key]
        if not dst.is_meta:
            tx.write(dst, value)
            continue
        if place is not None:
            value = place(value, dst)
        made: dict[int, torch.Tensor] = {}
        for mod, name, is_buffer, old in owners[tensor_identity(dst)]:
            if id(old) not in made:
                keep = isinstance(old, nn.Parameter)
                made[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if keep else value
            tx.replace(mod, name, is_buffer, made[id(old)])


def _shard_value(dst: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether ``value`` is the staged local shard of ``dst``, a DTensor (a plain tensor, not a DTensor)."""
    return callable(getattr(dst, "to_local", None)) and type(value) in (torch.Tensor, nn.Parameter)


def _requires_grad(tensor: torch.Tensor, flag: bool) -> None:
    """``tensor.requires_grad_(flag)``; an inference tensor takes ``True`` only inside inference mode."""
    with torch.inference_mode(tensor.is_inference()):
        tensor.requires_grad_(flag)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT (in the main thread) until the block is done, then deliver it to the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except (ValueError, OSError):  # pragma: no cover - signals unavailable here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)
