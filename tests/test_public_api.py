"""The public surface: __all__ is exact and sorted, every docstring example runs, errors are one tree."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import weightsurgery
from weightsurgery import errors

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(weightsurgery.__path__, "weightsurgery.") if not m.name.endswith("__main__")
)


def test_all_is_sorted_and_matches_the_exports() -> None:
    assert weightsurgery.__all__ == sorted(weightsurgery.__all__)
    loaded = {n: getattr(weightsurgery, n) for n in weightsurgery.__all__}  # the names load on first use
    assert not any(inspect.ismodule(v) for n, v in loaded.items() if n != "errors")  # no submodule hides a name
    public = {n for n in dir(weightsurgery) if not n.startswith("_") and not inspect.ismodule(getattr(weightsurgery, n))}
    assert public == set(weightsurgery.__all__) - {"errors"}  # nothing exported by accident, nothing missing
    assert inspect.ismodule(weightsurgery.errors)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_all_and_its_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    if not name.rsplit(".", 1)[-1].startswith("_") or name.endswith("__init__"):
        assert hasattr(module, "__all__") or module.__file__.endswith("__init__.py"), f"{name} has no __all__"
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"


def test_public_callables_have_examples() -> None:
    for name in ("transfer", "resolve", "make_plan", "build_target", "convert_checkpoint", "diff_checkpoints"):
        doc = inspect.getdoc(getattr(weightsurgery, name)) or ""
        assert ">>>" in doc, f"{name} has no runnable example"
        assert "Args:" in doc, f"{name} documents no arguments"


def test_every_error_derives_from_the_root_and_is_drawn_in_the_tree() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.WeightSurgeryError), name
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree in errors.py's docstring"
