"""URL sources: verified downloads into the torch hub cache, from a local static server."""

from __future__ import annotations

import hashlib
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
)
from weightsurgery.sources import SourceKind, resolve
from weightsurgery.sources.url import expected_hashes


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
    assert (torch_checkpoints / url.rsplit("/", 1)[1]).read_bytes() == data


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


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_interrupted_transfer_leaves_nothing_in_the_cache(hub_standin, torch_checkpoints, suffix) -> None:
    data = torch_bytes(tensors(6)) if suffix == ".pth" else save(tensors(6))
    url = hub_standin.add_static(f"cut{suffix}", data, cut_after=len(data) // 2)
    with pytest.raises(
        CorruptCheckpointError,
        match=rf"the download of {url} is not a whole checkpoint .* "
        r"nothing was cached",
    ):
        resolve(url, quiet=True)
    assert leftovers(torch_checkpoints, "cut") == []


def test_interrupted_transfer_with_a_hash_name_is_an_integrity_error(hub_standin, torch_checkpoints) -> None:
    data = torch_bytes(tensors(7))
    url = hub_standin.add_static(f"cuthash-{sha256(data)[:8]}.pth", data, cut_after=100)
    with pytest.raises(IntegrityError, match="nothing was cached"):
        resolve(url, quiet=True)
    assert leftovers(torch_checkpoints, "cuthash") == []


def test_a_cached_copy_that_breaks_its_pin_is_refused(hub_standin, torch_checkpoints) -> None:
    (torch_checkpoints / "swapped.safetensors").write_bytes(save(tensors(8)))
    url = hub_standin.add_static("swapped.safetensors", save(tensors(9)))
    with pytest.raises(IntegrityError, match=r"the cached copy .*swapped.safetensors does not match; delete it"):
        resolve(url + "#sha256=" + sha256(save(tensors(9))), quiet=True)


def test_missing_file_is_not_found(hub_standin) -> None:
    with pytest.raises(SourceNotFoundError, match=r"answered HTTP 404 .*; check the URL"):
        resolve(f"{hub_standin.url}/static/absent.pth", quiet=True)


def test_unreachable_server_is_an_offline_error() -> None:
    with pytest.raises(OfflineSourceError, match=r"cannot reach http://127.0.0.1:9/x.pth .* and it is not cached"):
        resolve("http://127.0.0.1:9/x.pth", quiet=True)


def test_url_without_a_file_name() -> None:
    with pytest.raises(SourceSpecError, match=r"names no file; give the URL of the checkpoint file itself"):
        resolve("http://127.0.0.1:9/", quiet=True)


def test_expected_hashes() -> None:
    assert expected_hashes("https://x/resnet18-f37072fd.pth") == (None, "f37072fd")
    assert expected_hashes("https://x/efficientnet-b0.pth") == (None, None)  # too short to be a hash
    assert expected_hashes("https://x/w.bin#sha256=" + "AB" * 32) == ("ab" * 32, None)
    with pytest.raises(SourceSpecError, match=r"the fragment must be '#sha256=' followed by 64 hex digits"):
        expected_hashes("https://x/w.bin#md5=abc")


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
