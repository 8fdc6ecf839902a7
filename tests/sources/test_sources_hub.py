"""hf-hub: sources through the real huggingface_hub client against the local stand-in."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save
from torch import nn

from sources_payloads import tensors, torch_bytes

from weightsurgery.errors import SourceNotFoundError, SourceSpecError
from weightsurgery.sources import SourceKind, resolve
from weightsurgery.sources.hub import HubId, parse_hub_id


def assert_same(ckpt, state: dict[str, torch.Tensor]) -> None:
    assert sorted(ckpt.keys()) == sorted(state)
    for key, value in state.items():
        assert torch.equal(ckpt.load(key), value), key


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 4)


def test_single_safetensors_resolves_at_the_served_commit(hub_standin) -> None:
    state = tensors(0)
    commit = hub_standin.add_commit("t/single", {"model.safetensors": save(state)})
    with resolve("hf-hub:t/single", quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.HUB
        assert ckpt.origin.location == "hf-hub:t/single"
        assert ckpt.origin.revision == commit
        assert ckpt.origin.details["files_in_repo"] == ["model.safetensors"]
        assert ckpt.origin.details["format"] == "safetensors"
        assert_same(ckpt, state)


def test_sharded_safetensors_fetches_every_shard(hub_standin) -> None:
    state = {**tensors(1), "extra.weight": torch.arange(6.0).reshape(2, 3)}
    first = {k: v for k, v in state.items() if k.startswith("layer")}
    second = {"extra.weight": state["extra.weight"]}
    index = {"metadata": {}, "weight_map": {**dict.fromkeys(first, "a.safetensors"), "extra.weight": "b.safetensors"}}
    hub_standin.add_commit(
        "t/sharded",
        {
            "model.safetensors.index.json": json.dumps(index).encode(),
            "a.safetensors": save(first),
            "b.safetensors": save(second),
        },
    )
    with resolve("hf-hub:t/sharded", quiet=True) as ckpt:
        fetched = ckpt.origin.details["files_in_repo"]
        assert fetched == ["model.safetensors.index.json", "a.safetensors", "b.safetensors"]
        assert_same(ckpt, state)


def test_bin_is_taken_only_after_the_hub_says_safetensors_do_not_exist(hub_standin) -> None:
    state = tensors(2)
    hub_standin.add_commit("t/binonly", {"pytorch_model.bin": torch_bytes(state)})
    with resolve("hf-hub:t/binonly", quiet=True) as ckpt:
        assert ckpt.origin.details["files_in_repo"] == ["pytorch_model.bin"]
        assert ckpt.origin.details["format"] == "torch-pickle"
        assert_same(ckpt, state)
    asked = [path.rsplit("/", 1)[-1] for method, path in hub_standin.requested("/t/binonly/") if method == "HEAD"]
    assert asked[:3] == ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]


def test_revisions_branch_commit_and_argument(hub_standin) -> None:
    old, new = tensors(3), tensors(4)
    first = hub_standin.add_commit("t/revs", {"model.safetensors": save(old)})
    second = hub_standin.add_commit("t/revs", {"model.safetensors": save(new)})
    hub_standin.add_commit("t/revs", {"model.safetensors": save(old)}, branch="v1")
    with resolve("hf-hub:t/revs", quiet=True) as ckpt:
        assert ckpt.origin.revision == second
        assert_same(ckpt, new)
    with resolve(f"hf-hub:t/revs@{first}", quiet=True) as ckpt:
        assert ckpt.origin.revision == first
        assert_same(ckpt, old)
    with resolve("hf-hub:t/revs", revision="v1", quiet=True) as ckpt:
        assert ckpt.origin.details["revision_requested"] == "v1"
        assert_same(ckpt, old)


def test_a_cached_commit_is_read_without_asking_the_hub(hub_standin) -> None:
    commit = hub_standin.add_commit("t/pinned", {"model.safetensors": save(tensors(5))})
    resolve(f"hf-hub:t/pinned@{commit}", quiet=True).close()
    before = len(hub_standin.requested("/t/pinned/"))
    with resolve(f"hf-hub:t/pinned@{commit}", quiet=True) as ckpt:
        assert ckpt.origin.revision == commit
    assert len(hub_standin.requested("/t/pinned/")) == before


def test_path_in_repo_names_the_file(hub_standin) -> None:
    state = tensors(6)
    hub_standin.add_commit("t/paths", {"model.safetensors": save(tensors(7)), "sub/w.safetensors": save(state)})
    with resolve("hf-hub:t/paths/sub/w.safetensors", quiet=True) as ckpt:
        assert ckpt.origin.details["files_in_repo"] == ["sub/w.safetensors"]
        assert_same(ckpt, state)


def test_missing_repo(hub_standin) -> None:
    with pytest.raises(SourceNotFoundError, match=r"hub repo 't/nope' does not exist or is private; check the id"):
        resolve("hf-hub:t/nope", quiet=True)


def test_missing_revision(hub_standin) -> None:
    hub_standin.add_commit("t/norev", {"model.safetensors": save(tensors(8))})
    with pytest.raises(SourceNotFoundError, match=r"'t/norev' has no revision 'v9'; pass an existing branch"):
        resolve("hf-hub:t/norev@v9", quiet=True)


def test_missing_file_named_in_the_source(hub_standin) -> None:
    hub_standin.add_commit("t/nofile", {"model.safetensors": save(tensors(9))})
    with pytest.raises(SourceNotFoundError, match=r"t/nofile@main has no file 'w.safetensors'; check the path"):
        resolve("hf-hub:t/nofile/w.safetensors", quiet=True)


def test_repo_without_weights_lists_what_was_tried(hub_standin) -> None:
    hub_standin.add_commit("t/empty", {"README.md": b"hello"})
    with pytest.raises(SourceNotFoundError, match=r"t/empty@main has none of model.safetensors, .*name the weights"):
        resolve("hf-hub:t/empty", quiet=True)


def test_two_different_revisions_are_refused() -> None:
    with pytest.raises(SourceSpecError, match=r"names revision 'a' but revision='b' was also given"):
        resolve("hf-hub:t/x@a", revision="b")


def test_malformed_hub_id() -> None:
    with pytest.raises(SourceSpecError, match=r"cannot read 'hf-hub:' as a hub id"):
        parse_hub_id("hf-hub:")


_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True)


@given(
    org=_PART,
    repo=_PART,
    revision=st.none() | _PART,
    path=st.none() | st.lists(_PART, min_size=1, max_size=3).map("/".join),
)
def test_parse_hub_id_round_trips(org: str, repo: str, revision: str | None, path: str | None) -> None:
    text = f"hf-hub:{org}/{repo}" + (f"@{revision}" if revision else "") + (f"/{path}" if path else "")
    assert parse_hub_id(text) == HubId(f"{org}/{repo}", revision, path)


def test_quiet_hides_the_progress_bar(hub_standin, capfd, monkeypatch) -> None:
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's switch to draw bars on a non-terminal
    hub_standin.add_commit("t/quiet", {"model.safetensors": save(tensors(10))})
    resolve("hf-hub:t/quiet", quiet=True).close()
    assert "model.safetensors" not in capfd.readouterr().err
    hub_standin.add_commit("t/loud", {"model.safetensors": save(tensors(11))})
    resolve("hf-hub:t/loud", quiet=False).close()
    assert "model.safetensors" in capfd.readouterr().err


def test_transfer_from_the_hub_fills_the_model(hub_standin) -> None:
    from weightsurgery import transfer

    state = tensors(12)
    hub_standin.add_commit("t/transfer", {"model.safetensors": save(state)})
    model = Tiny()
    report = transfer("hf-hub:t/transfer", model)
    assert report.mapping == {"layer.weight": "layer.weight", "layer.bias": "layer.bias"}
    assert torch.equal(model.layer.weight, state["layer.weight"])
