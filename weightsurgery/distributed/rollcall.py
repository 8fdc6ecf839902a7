"""Which rank is gone: a roll call through the job's store after a collective failed.

When a rank dies (killed, crashed) or hangs, the others' collectives fail: at
once where they talk to it directly (gloo: "Connection closed by peer", which
names an address, not a rank), or at the process group's timeout where they
wait on a survivor that gave up. Neither says which rank is missing, and the
survivors can no longer exchange anything through the process group.

So each survivor reports itself under a key of the job's key-value store (the
one ``init_process_group`` rendezvoused through: torchrun's agent, or the
``MASTER_ADDR`` server) and waits for the others' reports until ``timeout``
after its failing collective began, plus a short grace for the ranks that
reached theirs later (each of those fails at most ``timeout`` after it began to
wait). The ranks that never report are the missing ones, and every survivor
names the same ones unless a rank reaches its step more than the grace after
the others. Nothing of this runs on the healthy path.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

__all__ = ["grace", "new_serial", "roll_call"]

_SERIALS = itertools.count()
POLL_S = 0.05


def new_serial() -> int:
    """A number for a new transfer session: the same on every rank (every rank makes its sessions in one order)."""
    return next(_SERIALS)


def grace(timeout: timedelta) -> float:
    """Seconds a survivor waits past ``timeout`` for ranks that reached the failed step later: max(2, timeout / 8)."""
    return max(2.0, timeout.total_seconds() / 8)


def roll_call(
    *,
    serial: int,
    step: str,
    rank: int,
    world: int,
    started: float,
    timeout: timedelta,
    store: Any | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[int], str | None]:
    """Report this rank at ``step``; return the ranks that did not report, and why none could be told.

    Args:
        serial: the session's number (:func:`new_serial`), so that two transfers in one job never mix.
        step: the step that failed.
        rank, world: this rank, and how many there are.
        started: ``clock()`` when the failing collective began.
        timeout: the process group's timeout.
        store: the store (default: the default process group's).

    Returns:
        ``(missing, None)``, or ``([], reason)`` when the store itself cannot be reached
        (it ran in the rank that died).
    """
    try:
        if store is None:
            import torch.distributed as dist

            store = dist.distributed_c10d._get_default_store()
        prefix = f"weightsurgery/rollcall/{serial}/{step}/"
        store.set(prefix + str(rank), "here")
        deadline = started + timeout.total_seconds() + grace(timeout)
        waiting = [r for r in range(world) if r != rank]
        while True:
            waiting = [r for r in waiting if not store.check([prefix + str(r)])]
            if not waiting or clock() >= deadline:
                return waiting, None
            time.sleep(POLL_S)
    except Exception as exc:  # the store is gone too (it lived in the rank that died), or there is none
        return [], f"{type(exc).__name__}: {str(exc)[:200]}"
