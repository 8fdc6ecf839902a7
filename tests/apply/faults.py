"""Fault injection at every step of apply: each read, each adapter, each init, each commit write.

:class:`Steps` wraps the real functions apply calls at those seams, records
each call as a step, and raises at the one asked for, before or after the real
step ran. A KeyboardInterrupt is a real SIGINT delivered to this process
(:func:`signal.raise_signal`): Python's own handler raises it, as a Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import weightsurgery.adapt
import weightsurgery.init.engine
from weightsurgery.apply.commit import Commit
from weightsurgery.sources.checkpoint import Checkpoint


class InjectedFault(RuntimeError):
    """The error a step raises when told to."""


class Steps:
    """Records every step of a transfer; raises at step ``fail_at`` (0-based) if given.

    Args:
        fail_at: the step to fail at, or ``None`` to only record.
        fault: ``"error"`` (an :class:`InjectedFault`) or ``"interrupt"`` (a real SIGINT).
        when: ``"before"`` the real step runs, or ``"after"`` it ran.
    """

    def __init__(self, fail_at: int | None = None, *, fault: str = "error", when: str = "before") -> None:
        self.fail_at, self.fault, self.when = fail_at, fault, when
        self.log: list[tuple[str, str]] = []

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.log}

    def _fire(self) -> None:
        if self.fault == "interrupt":
            signal.raise_signal(signal.SIGINT)  # the default handler raises KeyboardInterrupt right here
        raise InjectedFault(f"injected at step {self.fail_at}: {self.log[-1]}")

    def _wrap(self, kind: str, real: Callable[..., Any], name: Callable[..., str]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            self.log.append((kind, name(*args, **kwargs)))
            hit = len(self.log) - 1 == self.fail_at
            if hit and self.when == "before":
                self._fire()
            out = real(*args, **kwargs)
            if hit:
                self._fire()
            return out

        return step

    @contextlib.contextmanager
    def installed(self) -> Iterator[Steps]:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        engine = weightsurgery.init.engine
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Checkpoint, "load", self._wrap("read", Checkpoint.load, lambda ckpt, key: key))
            mp.setattr(weightsurgery.adapt, "run_adapter",
                       self._wrap("adapter", weightsurgery.adapt.run_adapter, lambda *a, key=None, **k: str(key)))
            mp.setattr(engine, "_fill", self._wrap("init", engine._fill, lambda spec, t, g: t.key))
            mp.setattr(engine, "module_default",
                       self._wrap("init", engine.module_default, lambda owner, names, **k: f"reset {sorted(names)}"))
            mp.setattr(engine, "_replay", self._wrap("init", engine._replay, lambda c, keys, b: f"constructor {sorted(keys)}"))
            for method in ("write", "replace", "set_requires_grad", "set_extra_state"):
                mp.setattr(Commit, method, self._wrap("write", getattr(Commit, method), lambda *a, m=method, **k: m))
            yield self
