"""A URL's cache entry: its name keyed by URL or by hash, the hashes a URL promises, held to them when cached."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save

from sources_payloads import tensors, torch_bytes

from weightsurgery.errors import IntegrityError, SourceSpecError
from weightsurgery.sources import resolve
from weightsurgery.sources.url_cache import cache_path, expected_hashes, strip_fragment


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_expected_hashes() -> None:
    assert expected_hashes("https://x/resnet18-f37072fd.pth") == (None, "f37072fd")
    assert expected_hashes("https://x/efficientnet-b0.pth") == (None, None)  # too short to be a hash
    assert expected_hashes("https://x/resnet-20240115.pth") == (None, None)  # a date: digits only
    assert expected_hashes("https://x/vgg13-19584684.pth", torch_hub_names=True) == (None, "19584684")  # torchvision
    assert expected_hashes("https://x/w-1a2b3c4d.tar.gz") == (None, None)  # not before the suffix
    assert expected_hashes("https://x/w.bin#sha256=" + "AB" * 32) == ("ab" * 32, None)
    with pytest.raises(SourceSpecError, match=r"the fragment must be '#sha256=' followed by 64 hex digits"):
        expected_hashes("https://x/w.bin#md5=abc")


def test_the_cache_key_is_the_url_less_its_fragment_query_included() -> None:
    pinned = "https://x/w.safetensors#sha256=" + "ab" * 32
    assert strip_fragment(pinned) == "https://x/w.safetensors"
    assert cache_path(pinned) == cache_path("https://x/w.safetensors")
    assert cache_path("https://x/w.safetensors?v=1") != cache_path("https://x/w.safetensors?v=2")


def test_a_date_in_the_name_is_not_a_hash(hub_standin, torch_checkpoints) -> None:
    data = torch_bytes(tensors(16))
    url = hub_standin.add_static("resnet-20240115.pth", data)
    with resolve(url, quiet=True) as ckpt:  # torch.hub's regex would read 20240115 as a hash and refuse it
        assert ckpt.origin.sha256 is None
    assert cache_path(url).name.startswith("resnet-20240115.") and cache_path(url).read_bytes() == data
    assert not (torch_checkpoints / "resnet-20240115.pth").exists()


def test_two_urls_with_the_same_file_name_get_their_own_weights(hub_standin) -> None:
    first, second = tensors(13), tensors(14)
    urls = [hub_standin.add_static(f"{where}/model.safetensors", save(state)) for where, state in
            (("org-a", first), ("org-b", second))]
    assert cache_path(urls[0]) != cache_path(urls[1])
    for url, state in zip(urls, (first, second)):
        with resolve(url, quiet=True) as ckpt:
            assert ckpt.origin.details["downloaded"] is True
            assert torch.equal(ckpt.load("layer.weight"), state["layer.weight"])
    with resolve(urls[0], quiet=True) as ckpt:  # each is still cached under its own key
        assert ckpt.origin.details["downloaded"] is False
        assert torch.equal(ckpt.load("layer.weight"), first["layer.weight"])


def test_two_urls_with_the_same_hash_name_share_one_entry(hub_standin) -> None:
    data = torch_bytes(tensors(15))
    name = f"shared-{sha256(data)[:8]}.pth"
    one, other = (hub_standin.add_static(f"{where}/{name}", data) for where in ("mirror-a", "mirror-b"))
    assert cache_path(one) == cache_path(other)
    resolve(one, quiet=True).close()
    with resolve(other, quiet=True) as ckpt:  # the hash pins the content, whichever URL serves it
        assert ckpt.origin.details["downloaded"] is False and ckpt.origin.sha256 == sha256(data)
    assert hub_standin.requested(f"/static/mirror-b/{name}") == []


def test_a_cached_copy_that_breaks_its_pin_is_evicted_and_downloaded_again(hub_standin, torch_checkpoints) -> None:
    data = save(tensors(9))
    url = hub_standin.add_static("swapped.safetensors", data) + "#sha256=" + sha256(data)
    cached = cache_path(url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(save(tensors(8)))
    with pytest.raises(
        IntegrityError,
        match=rf"the cached copy {cached} has [0-9a-f]{{64}}, expected {sha256(data)}; removed it from the cache, "
        r"so the next run downloads it again",
    ):
        resolve(url, quiet=True)
    assert not cached.exists()
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.details["downloaded"] is True and ckpt.origin.sha256 == sha256(data)


def test_a_hash_named_file_placed_in_the_cache_is_verified_once_and_marked(hub_standin, torch_checkpoints) -> None:
    data = torch_bytes(tensors(17))
    url = f"{hub_standin.url}/static/placed-{sha256(data)[:8]}.pth"  # the server does not have it
    cached, mark = cache_path(url), torch_checkpoints / f".placed-{sha256(data)[:8]}.pth.sha256"
    cached.write_bytes(data)
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.sha256 == sha256(data) and ckpt.origin.details["downloaded"] is False
    assert json.loads(mark.read_text())["sha256"] == sha256(data)
    cached.write_bytes(torch_bytes(tensors(18)))  # replaced afterwards: the mark no longer fits, so it is hashed again
    with pytest.raises(IntegrityError, match=rf"the cached copy {cached} has .*, expected {sha256(data)[:8]}; removed"):
        resolve(url, quiet=True)
    assert not cached.exists() and not mark.exists()


def test_a_download_changed_on_disk_is_refused_evicted_and_downloaded_again(hub_standin) -> None:
    state = tensors(19)
    url = hub_standin.add_static("changed.safetensors", save(state))
    resolve(url, quiet=True).close()
    cache_path(url).write_bytes(save(tensors(20)))  # another process, or bit rot, changed it
    with pytest.raises(IntegrityError, match=r"has [0-9a-f]{64}, it was downloaded as [0-9a-f]{64}; removed it"):
        resolve(url, quiet=True)
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.origin.details["downloaded"] is True
        assert torch.equal(ckpt.load("layer.bias"), state["layer.bias"])
