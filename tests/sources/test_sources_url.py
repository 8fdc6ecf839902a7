"""URL sources: verified downloads into the torch hub cache, keyed by URL, from a local static server."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from torch import nn

from sources_payloads import tensors, torch_bytes

from weightsurgery.errors import (
    CorruptCheckpointError,
    IntegrityError,
    OfflineSourceError,
    SourceNotFoundError,
    SourceSpecError,
    UnsafeCheckpointError,
)
from weightsurgery.sources import SourceKind, resolve
from weightsurgery.sources.url import cache_path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path, stem: str) -> list[str]:
    """Files in the cache folder that belong to this download, cached or half-written."""
    return sorted(p.name for p in folder.iterdir() if stem in p.name or p.name.startswith(".weightsurgery-download"))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 4)


def test_hash_in_the_file_name_is_verified_and_reported(hub_standin, torch_checkpoints) -> None:
    state = tensors(0)
    data = torch_bytes(state)
    url = hub_standin.add_static(f"good-{sha256(data)[:10]}.pth", data)
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.URL
        assert ckpt.origin.location == url
        assert ckpt.origin.sha256 == sha256(data)
        assert ckpt.origin.details["format"] == "torch-pickle"
        assert torch.equal(ckpt.load("layer.weight"), state["layer.weight"])
    cached = torch_checkpoints / url.rsplit("/", 1)[1]  # a hash in the name: torch.hub's own cache name
    assert cached.read_bytes() == data
    mark = json.loads((torch_checkpoints / f".{cached.name}.sha256").read_text())
    assert (mark["sha256"], mark["size"], mark["url"]) == (sha256(data), len(data), url)


def test_a_cached_file_is_not_fetched_again(hub_standin) -> None:
    data = save(tensors(1))
    url = hub_standin.add_static("cached-once.safetensors", data)
    resolve(url, quiet=True).close()
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.details["downloaded"] is False
    assert len(hub_standin.requested("/static/cached-once.safetensors")) == 1


def test_sha256_fragment_is_verified(hub_standin) -> None:
    data = save(tensors(2))
    url = hub_standin.add_static("pinned.safetensors", data) + f"#sha256={sha256(data)}"
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.sha256 == sha256(data)
        assert ckpt.keys() == ["layer.bias", "layer.weight"]


def test_tampered_file_is_refused_and_nothing_is_cached(hub_standin, torch_checkpoints) -> None:
    genuine, tampered = torch_bytes(tensors(3)), torch_bytes(tensors(4))
    prefix = sha256(genuine)[:8]
    url = hub_standin.add_static(f"tampered-{prefix}.pth", tampered)
    with pytest.raises(
        IntegrityError,
        match=rf"sha256 mismatch for {url}: expected {prefix}, got {sha256(tampered)}; "
        r"nothing was cached",
    ):
        resolve(url, quiet=True)
    assert leftovers(torch_checkpoints, "tampered-") == []


def test_wrong_fragment_is_refused_and_nothing_is_cached(hub_standin, torch_checkpoints) -> None:
    data = save(tensors(5))
    url = hub_standin.add_static("wrongpin.safetensors", data) + "#sha256=" + "0" * 64
    with pytest.raises(IntegrityError, match=r"expected 0{64}, got [0-9a-f]{64}; nothing was cached"):
        resolve(url, quiet=True)
    assert leftovers(torch_checkpoints, "wrongpin") == []


@pytest.mark.parametrize("name", ["interrupted.pth", "interrupted.safetensors", "interrupted-{hash}.pth"])
def test_interrupted_transfer_leaves_nothing_in_the_cache(hub_standin, torch_checkpoints, name) -> None:
    data = save(tensors(6)) if name.endswith(".safetensors") else torch_bytes(tensors(6))
    url = hub_standin.add_static(name.format(hash=sha256(data)[:8]), data, cut_after=len(data) // 2)
    with pytest.raises(
        CorruptCheckpointError,
        match=rf"the download of {url} is not a whole checkpoint \(the connection closed after {len(data) // 2} of "
        rf"{len(data)} bytes, on each of 4 attempts\); nothing was cached",
    ):
        resolve(url, quiet=True)
    assert leftovers(torch_checkpoints, "interrupted") == []


def test_missing_file_is_not_found(hub_standin) -> None:
    with pytest.raises(SourceNotFoundError, match=r"answered HTTP 404 .*; check the URL"):
        resolve(f"{hub_standin.url}/static/absent.pth", quiet=True)


def test_unreachable_server_is_an_offline_error() -> None:
    with pytest.raises(OfflineSourceError, match=r"cannot reach http://127.0.0.1:9/x.pth .* and it is not cached"):
        resolve("http://127.0.0.1:9/x.pth", quiet=True)


@pytest.mark.parametrize("tail", ["/", "/w.pth/.", "/w.pth/..", "/."])
def test_a_url_that_names_a_folder_is_refused_before_any_request(hub_standin, torch_checkpoints, tail) -> None:
    url = f"{hub_standin.url}/static/dots{tail}"
    before = list(hub_standin.requests)
    with pytest.raises(
        SourceSpecError,
        match=rf"names no file \(its path ends in '/{tail.rsplit('/', 1)[1]}', a folder\); give the URL of the "
        r"checkpoint file itself",
    ):
        resolve(url, quiet=True)
    assert hub_standin.requests == before
    assert not [p for p in torch_checkpoints.iterdir() if p.name.endswith(".partial") or p.name in (".", "..")]


def test_quiet_hides_the_progress_bar(hub_standin, capfd) -> None:
    resolve(hub_standin.add_static("quiet.safetensors", save(tensors(10))), quiet=True).close()
    assert "B/s" not in capfd.readouterr().err
    resolve(hub_standin.add_static("loud.safetensors", save(tensors(11))), quiet=False).close()
    assert "B/s" in capfd.readouterr().err


def test_transfer_from_a_url_fills_the_model(hub_standin) -> None:
    from weightsurgery import transfer

    state = tensors(12)
    data = torch_bytes(state)
    model = Tiny()
    report = transfer(hub_standin.add_static(f"xfer-{sha256(data)[:8]}.pth", data), model)
    assert report.mapping == {"layer.weight": "layer.weight", "layer.bias": "layer.bias"}
    assert torch.equal(model.layer.bias, state["layer.bias"])


def test_an_html_page_served_as_200_is_not_cached_and_the_fixed_file_is_fetched_next(hub_standin) -> None:
    url = hub_standin.add_static("portal.safetensors", b"<!doctype html><html><body>Please sign in</body></html>")
    with pytest.raises(CorruptCheckpointError, match=rf"the download of {url} is not a whole checkpoint .*nothing was cached"):
        resolve(url, quiet=True)
    assert not cache_path(url).exists()
    state = tensors(21)
    hub_standin.add_static("portal.safetensors", save(state))  # the server is fixed
    with resolve(url, quiet=True) as ckpt:
        assert torch.equal(ckpt.load("layer.weight"), state["layer.weight"])


def test_a_cached_file_that_no_longer_opens_is_evicted_and_downloaded_again(hub_standin) -> None:
    state = tensors(22)
    url = hub_standin.add_static("placed.safetensors", save(state))
    cache_path(url).write_bytes(b"<html>saved from a browser</html>")  # placed by hand: no mark, nothing to hold it to
    with pytest.raises(
        CorruptCheckpointError,
        match=rf"not a readable safetensors file.*; it came from {url}: removed {cache_path(url)} from the cache, "
        r"so the next run downloads it again",
    ):
        resolve(url, quiet=True)
    assert not cache_path(url).exists()
    with resolve(url, quiet=True) as ckpt:
        assert torch.equal(ckpt.load("layer.weight"), state["layer.weight"])


def test_a_refused_unsafe_pickle_stays_in_the_cache_and_the_error_says_where(hub_standin) -> None:
    state = {**tensors(23), "args": argparse.Namespace(lr=0.1)}  # needs code: weights_only=True refuses it
    url = hub_standin.add_static("needs-code.pth", torch_bytes(state))
    cached = cache_path(url)
    with pytest.raises(
        UnsafeCheckpointError,
        match=rf"needs code to load.*It came from {url} and stays in the cache at {cached} .*: delete it if you "
        r"do not trust its source",
    ):
        resolve(url, quiet=True)
    assert cached.is_file()
    with pytest.warns(UserWarning, match="weights_only=False runs any code"):
        with resolve(url, quiet=True, weights_only=False) as ckpt:  # trusted now: read from the cache
            assert ckpt.origin.details["downloaded"] is False
            assert torch.equal(ckpt.load("layer.bias"), state["layer.bias"])
    assert len(hub_standin.requested("/static/needs-code.pth")) == 1
