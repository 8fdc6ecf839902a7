"""Refuse a pickle that asks an allowlisted constructor for a huge allocation, before unpickling it.

``weights_only=True`` allows a few callables that allocate memory sized by an
integer argument: ``bytearray(10**11)``, the legacy tensor constructors
(``torch.Tensor(n)``, ``torch.FloatTensor(n, m)``) and the storages
(``torch.UntypedStorage(n)``). A 40-byte pickle can then ask for gigabytes.
``torch.save`` never calls them with sizes (it rebuilds tensors from their
stored bytes and a bytearray from its contents), so :func:`scan_pickle`
walks the pickle's opcodes with a small symbolic stack, the opcodes torch's
weights-only unpickler accepts, and refuses any call of these with integer
arguments whose product is over :data:`MAX_ELEMENTS`. Other opcodes end the walk:
torch's weights-only unpickler refuses them itself.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable
from typing import IO, Any

from weightsurgery.errors import CorruptCheckpointError

__all__ = ["MAX_ELEMENTS", "scan_pickle"]

MAX_ELEMENTS = 1 << 20
"""The largest allocation (elements) a pickle may ask an allowlisted constructor for."""

_ALLOCATORS = ("builtins.bytearray", "__builtin__.bytearray", "torch.Tensor", "torch.UntypedStorage", "torch.storage.")
_INTS = {"BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG"}
_STRINGS = {"BINUNICODE", "SHORT_BINSTRING", "BINSTRING", "SHORT_BINUNICODE"}
_PUSH_OTHER = {"NONE", "NEWTRUE", "NEWFALSE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BINFLOAT"}


class _Global(str):
    """A global the pickle names, as ``module.name``."""


_OTHER = object()


def scan_pickle(data: bytes | IO[bytes], *, source: object) -> dict[str, int]:
    """Raise if the pickle calls an allocating constructor with a size over :data:`MAX_ELEMENTS`.

    Args:
        data: one pickle (bytes, or a binary file positioned at its start; it is read up to its STOP).
        source: the file, for the message.

    Returns:
        The storages the pickle declares (``torch.save``'s persistent ids): key -> element count.

    Raises:
        CorruptCheckpointError: the pickle asks for such an allocation.

    Example:
        >>> import pickle
        >>> scan_pickle(pickle.dumps(bytearray(b"abc"), protocol=2), source="ok.pth")
        {}
        >>> scan_pickle(b"\\x80\\x02c__builtin__\\nbytearray\\nJ\\x00\\x00\\x00\\x7f\\x85R.", source="bomb.pth")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.CorruptCheckpointError: bomb.pth is not a checkpoint torch.save wrote: its pickle calls builtins.bytearray(2130706432), an allocation of 2130706432 elements (at most 1048576 are allowed); refusing it. Re-download the file or re-save it with torch.save
    """
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[Any, Any] = {}
    declared: dict[str, int] = {}
    try:
        for op, arg, _ in _ops(data):
            name = op.name
            if name in _INTS:
                stack.append(arg)
            elif name in _STRINGS:
                stack.append(str(arg))
            elif name in _PUSH_OTHER:
                stack.append(_OTHER)
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_Global(f"{module}.{attr}"))
            elif name == "MARK":
                marks.append(stack)
                stack = []
            elif name == "TUPLE":
                items, stack = stack, marks.pop()
                stack.append(tuple(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("REDUCE", "NEWOBJ"):
                args = stack.pop()
                _check(stack[-1], args, source)
                stack[-1] = args[0] if stack[-1] == "torch.Size" and len(args) == 1 else _OTHER
            elif name in ("BUILD", "APPEND"):
                stack.pop()
            elif name == "SETITEM":
                del stack[-2:]
            elif name in ("APPENDS", "SETITEMS"):
                stack = marks.pop()
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif name == "BINPERSID":
                pid, stack[-1] = stack[-1], _OTHER
                if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and type(pid[4]) is int:
                    declared[str(pid[2])] = pid[4]
            elif name != "PROTO":
                break  # STOP, or an opcode torch's weights-only unpickler refuses on its own
    except CorruptCheckpointError:
        raise
    except (IndexError, KeyError, ValueError, TypeError):
        pass  # malformed: the unpickler will say so, with its own reason
    return declared


def _check(func: object, args: object, source: object) -> None:
    if not (isinstance(func, _Global) and func.startswith(_ALLOCATORS) or _is_tensor_class(func)):
        return
    ints = list(_ints(args))
    if not ints:
        return
    total = 1
    for n in ints:
        total *= max(n, 0)
    if total > MAX_ELEMENTS:
        call = f"{func.replace('__builtin__.', 'builtins.')}({', '.join(map(str, ints))})"
        raise CorruptCheckpointError(
            f"{source} is not a checkpoint torch.save wrote: its pickle calls {call}, an allocation of {total} "
            f"elements (at most {MAX_ELEMENTS} are allowed); refusing it. Re-download the file or re-save it "
            "with torch.save",
            source=source,
        )


def _is_tensor_class(func: object) -> bool:
    """``torch.FloatTensor``, ``torch.cuda.HalfTensor``...: the legacy constructors, which take sizes."""
    return isinstance(func, _Global) and func.startswith("torch.") and func.endswith(("Tensor", "Storage"))


def _ints(args: object) -> Iterable[int]:
    """The sizes among a call's arguments: integers, and integers in a tuple argument (``torch.Size``)."""
    for item in args if isinstance(args, tuple) else ():
        for n in item if isinstance(item, tuple) else (item,):
            if isinstance(n, int) and not isinstance(n, bool):
                yield n


def _ops(data: bytes | IO[bytes]) -> Iterable[tuple[Any, Any, Any]]:
    return pickletools.genops(data)
