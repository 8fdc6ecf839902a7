"""Every exception weightsurgery raises.

The tree mixes in the built-in exception a caller would naturally catch, so
``except FileNotFoundError`` still works on a missing checkpoint::

    WeightSurgeryError(Exception)
    ├── SourceError
    │   ├── SourceNotFoundError(FileNotFoundError)    path, repo, file or name that does not exist
    │   ├── CorruptCheckpointError(ValueError)        truncated or malformed file
    │   ├── UnsafeCheckpointError(pickle.UnpicklingError)  pickle needs code; opt in with weights_only=False
    │   ├── AmbiguousContainerError(KeyError)         several nested state dicts; choose with key=
    │   ├── UnknownContainerError(KeyError)           a key= that names no container; lists the real ones
    │   ├── EmptyCheckpointError(ValueError)          a well-formed source with entries but no tensors
    │   ├── UnknownSourceError(LookupError)           a name no registry knows; lists the closest names
    │   ├── SourceSpecError(ValueError)               a source string that does not parse (hf-hub:, URL)
    │   ├── OfflineSourceError(ConnectionError)       offline, unreachable or stalled, and not cached
    │   ├── IntegrityError(ValueError)                a download whose hash does not match
    │   ├── UnsupportedTensorError(TypeError)         a source tensor with no dense values: sparse, meta, complex into real
    │   ├── MissingExtraError(ImportError)            a format whose reader needs an extra; names it
    │   └── UnsupportedFormatError(ValueError)        a format no reader takes (TF checkpoints); says how to convert
    ├── PlanError(ValueError)                         a plan that does not fit the target
    │   ├── ShapeMismatchError                        on_mismatch="error" and shapes differ
    │   └── SharedMemoryConflictError                 two target tensors share memory but would get different values
    ├── ModuleProtocolError(TypeError)                a module transfer cannot handle (lazy, unloadable extra state)
    ├── StrictTransferError(RuntimeError)             strict=True and keys were left over
    ├── CoverageError(RuntimeError)                   coverage under min_coverage=
    ├── ShardedTransferError(RuntimeError)            a sharded (DTensor) transfer failed on some rank: the same error on every rank
    │   └── RankUnreachableError                      a rank died (killed, crashed) or hangs: the survivors name it
    ├── AdapterError(ValueError)                      an adapter whose conditions do not hold
    ├── RecipeError(ValueError)                       a recipe file or field that is malformed
    ├── InitSpecError(ValueError)                     a bad init spec or rule; lists the valid ones
    │   └── InitSpecMismatchError                     a spec that cannot fill its tensor (xavier on a bias)
    ├── TargetError(ValueError)                       a TARGET factory spec that cannot be built
    ├── OutputExistsError(FileExistsError)            an output file exists; overwrite it explicitly
    ├── OutputWriteError(OSError)                     writing an output failed (disk full, no folder...); the old file is kept
    ├── InputMemoryError(MemoryError)                 an input needs more memory than the process may allocate
    └── CLIError(ValueError)                          a command-line argument mistake

Errors carry attributes (``path``, ``key``, ``problems``) so callers can act on
them without parsing the message.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weightsurgery.report import IncorrectShape

__all__ = [
    "AdapterError", "AmbiguousContainerError", "CLIError", "CorruptCheckpointError", "CoverageError",
    "EmptyCheckpointError", "InitSpecError", "InitSpecMismatchError", "InputMemoryError", "IntegrityError",
    "MissingExtraError", "ModuleProtocolError", "OfflineSourceError", "OutputExistsError", "OutputWriteError",
    "PlanError", "RankUnreachableError", "RecipeError", "ShapeMismatchError", "ShardedTransferError",
    "SharedMemoryConflictError", "SourceError", "SourceNotFoundError", "SourceSpecError", "StrictTransferError",
    "TargetError", "UnknownContainerError", "UnknownSourceError", "UnsupportedFormatError", "UnsafeCheckpointError",
    "UnsupportedTensorError", "WeightSurgeryError",
]


class WeightSurgeryError(Exception):
    """Base class of every error raised by weightsurgery."""


class _MessageOnly:
    """Mixed in first: ``str(error)`` is the message, where the built-in base would format it.

    ``KeyError`` would ``repr()`` it; ``OSError`` and its subclasses would format ``(errno, strerror)``.
    """

    args: tuple[object, ...]  # BaseException's: every class this is mixed into has it

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceError(WeightSurgeryError):
    """A source could not be resolved or read.

    Attributes:
        source: the path, URL, repo id or name the user gave (as a string).
    """

    def __init__(self, message: str, *, source: object = None) -> None:
        super().__init__(message)
        self.source = None if source is None else str(source)


class SourceNotFoundError(_MessageOnly, SourceError, FileNotFoundError):
    """A path, repo, revision, file or registry entry that does not exist."""


class CorruptCheckpointError(SourceError, ValueError):
    """A checkpoint file that is truncated or malformed."""


class UnsafeCheckpointError(SourceError, pickle.UnpicklingError):
    """A pickle that needs arbitrary code to load, refused under ``weights_only=True``."""


class AmbiguousContainerError(_MessageOnly, SourceError, KeyError):
    """A nested checkpoint holding several candidate state dicts.

    Attributes:
        candidates: the container paths that hold a state dict.
    """

    def __init__(self, message: str, *, source: object = None, candidates: Sequence[str] = ()) -> None:
        super().__init__(message, source=source)
        self.candidates = tuple(candidates)


class UnknownContainerError(_MessageOnly, SourceError, KeyError):
    """A ``key=`` that names neither a container nor a key prefix of the checkpoint.

    Attributes:
        key: the ``key=`` the user gave.
        available: the containers and top-level key prefixes that do exist.
    """

    def __init__(self, message: str, *, source: object = None, key: str = "", available: Sequence[str] = ()) -> None:
        super().__init__(message, source=source)
        self.key = key
        self.available = tuple(available)


class EmptyCheckpointError(SourceError, ValueError):
    """A well-formed source with entries but no tensors (an optimizer-only file, a config).

    Unlike :class:`CorruptCheckpointError`, re-downloading does not help: the
    fix is to pass the file or object that holds the weights.
    """


class UnknownSourceError(SourceError, LookupError):
    """A name that no registry knows.

    Attributes:
        suggestions: the closest real names.
    """

    def __init__(self, message: str, *, source: object = None, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message, source=source)
        self.suggestions = tuple(suggestions)


class SourceSpecError(SourceError, ValueError):
    """A source string that does not parse.

    For example ``hf-hub:`` with no repo, a URL with no file name, or a revision
    given both in the string and as ``revision=`` with different values.
    """


class OfflineSourceError(SourceError, ConnectionError):
    """A remote source that is not cached while offline, or whose server cannot be reached or stalls."""


class IntegrityError(SourceError, ValueError):
    """A downloaded file whose hash does not match the expected one."""


class UnsupportedTensorError(SourceError, TypeError):
    """A source tensor apply cannot write into a dense target tensor.

    Sparse or another non-strided layout, ``meta`` (a shape with no data),
    quantized, nested, or complex values for a real target. Raised while
    staging, before anything is written.

    Attributes:
        key: the source key.
    """

    def __init__(self, message: str, *, source: object = None, key: str = "") -> None:
        super().__init__(message, source=source)
        self.key = key


class MissingExtraError(SourceError, ImportError):
    """A file whose reader needs a library that is not installed.

    Attributes:
        extra: the ``weightsurgery[...]`` extra that installs it.
    """

    def __init__(self, message: str, *, source: object = None, extra: str = "") -> None:
        super().__init__(message, source=source)
        self.extra = extra


class UnsupportedFormatError(SourceError, ValueError):
    """A file in a format no reader takes (a TensorFlow checkpoint); the message says how to convert it."""


class PlanError(WeightSurgeryError, ValueError):
    """A plan that does not fit its target or source.

    Attributes:
        problems: one line per problem, each naming the key.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class ShapeMismatchError(PlanError):
    """Raised under ``on_mismatch="error"`` when matched tensors differ in shape.

    Attributes:
        problems: one line per key, naming both keys and shapes.
        incorrect_shapes: the same as :class:`~weightsurgery.report.IncorrectShape` tuples
            ``(key, target_shape, source_shape)``, like ``Report.incorrect_shapes``.
    """

    def __init__(
        self, message: str, *, problems: Sequence[str] = (), incorrect_shapes: Sequence[IncorrectShape] = ()
    ) -> None:
        super().__init__(message, problems=problems)
        self.incorrect_shapes = tuple(incorrect_shapes)


class SharedMemoryConflictError(PlanError):
    """Target tensors that share memory (views of one tensor) would receive different values.

    Copying them one after the other would leave only the last write; nothing was changed.

    Attributes:
        keys: the target keys involved, in pairs ``(a, b)``.
        sources: target key -> where its value came from (a source key, or ``"init"``/``"kept"``).
    """

    def __init__(
        self, message: str, *, keys: Sequence[tuple[str, str]] = (), sources: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, problems=[f"{a} / {b}" for a, b in keys])
        self.keys = tuple(keys)
        self.sources = dict(sources or {})


class ModuleProtocolError(WeightSurgeryError, TypeError):
    """A module that a transfer cannot fill the way torch would: a lazy module, unloadable extra state.

    Attributes:
        module: the module's path in its model (``"<root>"`` for the model itself).
    """

    def __init__(self, message: str, *, module: str) -> None:
        super().__init__(message)
        self.module = module


class StrictTransferError(WeightSurgeryError, RuntimeError):
    """Raised under ``strict=True`` when target keys would be initialized or source keys go unused.

    Attributes:
        missing: target keys that would be initialized.
        unused: source keys nothing used.
    """

    def __init__(self, message: str, *, missing: Sequence[str] = (), unused: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unused = tuple(unused)


class CoverageError(WeightSurgeryError, RuntimeError):
    """Raised when the loaded fraction of the target is under ``min_coverage``.

    Attributes:
        coverage: the loaded fraction of target parameters (0..1).
        required: the ``min_coverage`` asked for.
    """

    def __init__(self, message: str, *, coverage: float, required: float) -> None:
        super().__init__(message)
        self.coverage = coverage
        self.required = required


class ShardedTransferError(WeightSurgeryError, RuntimeError):
    """A transfer into a sharded (DTensor) model failed; every rank raises this same error.

    Attributes:
        failures: rank -> ``"ErrorType: message"`` for every rank that failed (``{}``
            when the failure is not tied to a rank, e.g. a placement no transfer can fill).
        phase: the step that failed (``"resolve"``, ``"plan"``, ``"stage"``...), or ``None``.
    """

    def __init__(self, message: str, *, failures: Mapping[int, str], phase: str | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures)
        self.phase = phase


class RankUnreachableError(ShardedTransferError):
    """A rank of a sharded transfer stopped answering (killed, crashed, or hung) within the timeout.

    The surviving ranks cannot exchange their errors any more; each raises this
    one, naming the ranks that did not answer the roll call.

    Attributes:
        missing: the ranks that did not answer (empty when that could not be told).
    """

    def __init__(self, message: str, *, failures: Mapping[int, str], phase: str | None = None,
                 missing: Sequence[int] = ()) -> None:
        super().__init__(message, failures=failures, phase=phase)
        self.missing = tuple(missing)


class AdapterError(WeightSurgeryError, ValueError):
    """An adapter asked to do something its conditions do not allow."""


class RecipeError(WeightSurgeryError, ValueError):
    """A recipe that cannot be read: a bad file, format or field.

    Attributes:
        path: the recipe file, when read from one.
        field: the offending field (``"rename[2]"``, ``"adapt[0].pattern"``).
    """

    def __init__(self, message: str, *, path: object = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.field = field


class InitSpecError(WeightSurgeryError, ValueError):
    """A malformed init spec or rule. The message lists the valid specs."""


class InitSpecMismatchError(InitSpecError):
    """Init specs that cannot fill the tensors their rules select (xavier on a bias).

    Attributes:
        problems: one line per tensor, naming the key, its shape and the spec.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class TargetError(WeightSurgeryError, ValueError):
    """A target factory spec (``timm:NAME``, ``pkg.mod:callable``) that cannot be built."""


class OutputExistsError(_MessageOnly, WeightSurgeryError, FileExistsError):
    """An output file that already exists, refused unless overwriting was asked for.

    Attributes:
        path: the existing file.
    """

    def __init__(self, message: str, *, path: object) -> None:
        super().__init__(message)
        self.path = str(path)


class OutputWriteError(_MessageOnly, WeightSurgeryError, OSError):
    """Writing an output file failed (its folder is missing, a full disk, a file-size limit); the old file is kept.

    Attributes:
        path: the output file.
    """

    def __init__(self, message: str, *, path: object) -> None:
        super().__init__(message)
        self.path = str(path)


class InputMemoryError(WeightSurgeryError, MemoryError):
    """Reading or comparing an input needed more memory than the process may allocate.

    Attributes:
        path: the input (file, URL or name) being read.
        key: the tensor being read, if one was.
    """

    def __init__(self, message: str, *, path: object, key: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.key = key


class CLIError(WeightSurgeryError, ValueError):
    """A command-line mistake: a bad flag, a missing argument, flags that conflict."""
