"""Hub faults through the real huggingface_hub client: a connection cut mid-file, hostile indexes, HTML served as 200."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from safetensors.torch import save

from sources_payloads import tensors, torch_bytes

from weightsurgery.errors import CorruptCheckpointError, SourceError, SourceSpecError, UnsafeCheckpointError
from weightsurgery.sources import resolve

HTML = b"<!doctype html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"


def test_a_connection_cut_mid_file_is_a_source_error_naming_the_repo_and_file(hub_standin) -> None:
    data = save(tensors(0))
    hub_standin.add_commit("f/cut", {"model.safetensors": data})
    hub_standin.break_file("f/cut", "model.safetensors", cut_after=len(data) // 3)
    with pytest.raises(
        SourceError,
        match=r"downloading model.safetensors from hub repo f/cut@main failed \(RemoteProtocolError: peer closed "
        r"connection .*\); nothing usable was cached; try again",
    ) as info:
        resolve("hf-hub:f/cut", quiet=True)  # the client resumes 1 s apart; the 4th try (3 retries) is the last
    assert info.value.source == "hf-hub:f/cut@main/model.safetensors"
    hub_standin.fix_file("f/cut", "model.safetensors")
    with resolve("hf-hub:f/cut", quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]


@pytest.mark.parametrize(
    ("number", "shard"), list(enumerate(["../../outside.safetensors", "/etc/passwd", "sub/../../up.safetensors"]))
)
def test_an_index_naming_shards_outside_the_repo_is_refused_before_any_fetch(hub_standin, number, shard) -> None:
    repo = f"f/traverse{number}"
    index = {"weight_map": {"layer.weight": "a.safetensors", "layer.bias": shard}}
    hub_standin.add_commit(
        repo, {"model.safetensors.index.json": json.dumps(index).encode(), "a.safetensors": save(tensors(1))}
    )
    with pytest.raises(
        CorruptCheckpointError,
        match=rf"{repo}/model.safetensors.index.json names shards outside the repo folder \('{shard}'\); "
        r"a shard index may only name files beside it or below it",
    ):
        resolve(f"hf-hub:{repo}", quiet=True)
    fetched = [path.rsplit("/", 1)[1] for _, path in hub_standin.requested(f"/{repo}/resolve/")]
    assert "a.safetensors" not in fetched and shard.rsplit("/", 1)[1] not in fetched  # no shard was fetched


def test_a_path_leaving_the_repo_is_refused(hub_standin) -> None:
    hub_standin.add_commit("f/leave", {"model.safetensors": save(tensors(2))})
    with pytest.raises(SourceSpecError, match=r"'../x.safetensors' is not a path inside hub repo f/leave"):
        resolve("hf-hub:f/leave/../x.safetensors", quiet=True)
    assert hub_standin.requested("/f/leave/") == []


def test_html_served_as_200_is_evicted_so_a_rerun_after_the_fix_downloads_again(hub_standin) -> None:
    state = tensors(3)
    commit = hub_standin.add_commit("f/html", {"model.safetensors": save(state)})
    hub_standin.break_file("f/html", "model.safetensors", body=HTML)  # a proxy's sign-in page, as the file
    with pytest.raises(
        CorruptCheckpointError,
        match=rf"model.safetensors is not a readable safetensors file.*; it came from hub repo f/html at commit "
        rf"{commit}: removed .*snapshots/{commit}/model.safetensors from the cache, so the next run downloads it again",
    ):
        resolve("hf-hub:f/html", quiet=True)
    hub_standin.fix_file("f/html", "model.safetensors")  # same commit: the client would reuse a cached copy
    with resolve("hf-hub:f/html", quiet=True) as ckpt:
        assert ckpt.origin.revision == commit
        assert torch.equal(ckpt.load("layer.weight"), state["layer.weight"])
    gets = [path for method, path in hub_standin.requested("/f/html/resolve/") if method == "GET"]
    assert len(gets) == 2


def test_a_broken_shard_is_evicted_alone(hub_standin) -> None:
    first, second = {"layer.weight": tensors(4)["layer.weight"]}, {"layer.bias": tensors(4)["layer.bias"]}
    index = {"weight_map": {"layer.weight": "a.safetensors", "layer.bias": "b.safetensors"}}
    hub_standin.add_commit(
        "f/shards",
        {"model.safetensors.index.json": json.dumps(index).encode(), "a.safetensors": save(first), "b.safetensors": save(second)},
    )
    hub_standin.break_file("f/shards", "b.safetensors", body=HTML)
    with pytest.raises(CorruptCheckpointError, match=r"b.safetensors from the cache, so the next run") as info:
        resolve("hf-hub:f/shards", quiet=True)
    snapshot = os.path.dirname(info.value.source)
    assert sorted(os.listdir(snapshot)) == ["a.safetensors", "model.safetensors.index.json"]
    hub_standin.fix_file("f/shards", "b.safetensors")
    with resolve("hf-hub:f/shards", quiet=True) as ckpt:
        assert torch.equal(ckpt.load("layer.bias"), second["layer.bias"])


def test_a_refused_unsafe_hub_pickle_stays_in_the_cache_and_the_error_says_where(hub_standin) -> None:
    state = {**tensors(5), "args": argparse.Namespace(lr=0.1)}
    hub_standin.add_commit("f/unsafe", {"pytorch_model.bin": torch_bytes(state)})
    with pytest.raises(
        UnsafeCheckpointError, match=r"It came from hub repo f/unsafe at commit [0-9a-f]{40} and stays in the cache at "
    ) as info:
        resolve("hf-hub:f/unsafe", quiet=True)
    assert os.path.isfile(info.value.source) and "/snapshots/" in info.value.source


def test_a_file_truncated_after_it_was_opened_is_evicted_when_a_tensor_is_read(hub_standin) -> None:
    state = tensors(6)
    hub_standin.add_commit("f/truncated", {"model.safetensors": save(state)})
    ckpt = resolve("hf-hub:f/truncated", quiet=True)
    local = ckpt.origin.files[0]
    os.truncate(os.path.realpath(local), os.path.getsize(local) - 8)  # the disk copy loses its last bytes
    with pytest.raises(CorruptCheckpointError, match=r"it came from hub repo f/truncated .*: removed .* from the cache"):
        ckpt.state_dict()
    ckpt.close()
    assert not os.path.exists(local)
    with resolve("hf-hub:f/truncated", quiet=True) as again:
        assert torch.equal(again.load("layer.weight"), state["layer.weight"])
