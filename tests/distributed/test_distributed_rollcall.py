"""The roll call after a failed collective, on one process over a real in-memory store (torch's HashStore)."""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from weightsurgery.distributed.rollcall import grace, roll_call

T = timedelta(seconds=20)


def test_the_ranks_that_never_report_are_the_missing_ones() -> None:
    store = dist.HashStore()
    roll_call(serial=7, step="stage", rank=1, world=4, started=0.0, timeout=T, store=store, clock=lambda: 1e9)
    missing, why = roll_call(serial=7, step="stage", rank=0, world=4, started=0.0, timeout=T, store=store,
                             clock=lambda: 1e9)  # the deadline has passed: one look at the store
    assert (missing, why) == ([2, 3], None)
    assert store.check(["weightsurgery/rollcall/7/stage/0"])  # rank 0 reported itself for the others


def test_another_session_or_step_does_not_count() -> None:
    store = dist.HashStore()
    roll_call(serial=1, step="stage", rank=1, world=2, started=0.0, timeout=T, store=store, clock=lambda: 1e9)
    roll_call(serial=2, step="commit", rank=1, world=2, started=0.0, timeout=T, store=store, clock=lambda: 1e9)
    missing, _ = roll_call(serial=2, step="stage", rank=0, world=2, started=0.0, timeout=T, store=store,
                           clock=lambda: 1e9)
    assert missing == [1]


def test_when_everyone_answered_it_returns_at_its_first_look() -> None:
    store = dist.HashStore()
    for rank in (1, 2):
        store.set(f"weightsurgery/rollcall/0/commit/{rank}", "here")
    looks = []

    def clock() -> float:  # time stands still until 100 looks: far from the deadline (22.5) on every look
        looks.append(1)
        return 0.0 if len(looks) < 100 else 1e9

    missing, why = roll_call(serial=0, step="commit", rank=0, world=3, started=0.0, timeout=T, store=store,
                             clock=clock)
    assert (missing, why) == ([], None)
    assert looks == []  # it never needed to ask the time


def test_without_a_store_it_says_why_it_cannot_tell() -> None:
    assert not dist.is_initialized()
    missing, why = roll_call(serial=0, step="plan", rank=0, world=2, started=0.0, timeout=T)
    assert missing == [] and why is not None and "not been initialized" in why


def test_grace_grows_with_the_timeout() -> None:
    assert grace(timedelta(seconds=5)) == 2.0 and grace(timedelta(seconds=80)) == 10.0
