"""Import a framework's reading library only when its file is opened, naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from weightsurgery.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str, path: object) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying ``pip install weightsurgery[extra]``.

    Example:
        >>> require("json", "none", "x").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"reading {path} needs {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'weightsurgery[{extra}]' (or pip install {module.split('.')[0]})",
            source=path,
            extra=extra,
        ) from exc
