"""Errors that are also a KeyError or an OSError still print as their message (the tree itself: test_public_api.py)."""

from __future__ import annotations

import pytest

from weightsurgery.errors import (
    AmbiguousContainerError,
    OutputExistsError,
    OutputWriteError,
    SourceNotFoundError,
    UnknownContainerError,
    WeightSurgeryError,
)

ERRORS = [
    SourceNotFoundError("no checkpoint at runs/a.pt", source="runs/a.pt"),
    AmbiguousContainerError("several state dicts: model, model_ema; pass key=", candidates=["model", "model_ema"]),
    UnknownContainerError("key='ema' names no container; prefixes are: encoder", key="ema", available=["encoder"]),
    OutputExistsError("out.safetensors exists; pass --overwrite", path="out.safetensors"),
    OutputWriteError("writing out.safetensors failed: no space left", path="out.safetensors"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_str_is_the_message_whatever_builtin_exception_the_error_also_is(error: WeightSurgeryError) -> None:
    assert isinstance(error, (KeyError, OSError))
    assert str(error) == error.args[0]
    if isinstance(error, KeyError):  # KeyError alone would print the message quoted
        assert KeyError.__str__(error) == repr(error.args[0])
