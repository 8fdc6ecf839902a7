"""What a failed exchange says about the model, from what every rank reported (no process group needed)."""

from __future__ import annotations

from weightsurgery.distributed.collectives import ShardSession


def _at(label: str, failure: str | None = None) -> dict:
    return {"label": label, "failure": failure, "steps": []}


def test_before_the_commit_no_rank_changed_its_model() -> None:
    said = ShardSession._untouched([_at("stage", "OSError: gone"), _at("stage")])
    assert said == ", and no rank changed its model"


def test_ranks_whose_commit_succeeded_are_named() -> None:
    said = ShardSession._untouched([_at("commit"), _at("commit", "RuntimeError: boom"), _at("commit")])
    assert "rank(s) 0, 2 committed and keep their new shards" in said


def test_when_every_commit_failed_and_was_undone_nothing_is_claimed_kept() -> None:
    """One rank, or every rank failing its commit: each undid its writes, so no shard was kept."""
    assert ShardSession._untouched([_at("commit", "RuntimeError: boom")]) == ", and no rank changed its model"
    both = [_at("commit", "RuntimeError: a"), _at("commit", "KeyboardInterrupt: ")]
    assert ShardSession._untouched(both) == ", and no rank changed its model"
