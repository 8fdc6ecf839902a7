"""Registry names: torchvision through a registered tiny model served by the stand-in, timm through the hub stand-in.

torchvision's real resnet18 name is covered where generated weights can
still play it: a file at its real cache name that is not the real file is
refused (its hash is verified) and evicted.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save
from torchvision.models import ResNet18_Weights

import torchvision_tiny
from sources_payloads import torch_bytes

from weightsurgery.errors import IntegrityError, UnknownSourceError
from weightsurgery.sources import SourceKind, resolve
from weightsurgery.sources._timm import hub_candidates
from weightsurgery.sources.registry import suggest


@pytest.fixture(scope="session")
def tv_tiny(hub_standin) -> tuple[dict[str, torch.Tensor], type, str]:
    """torchvision's ``test_resnet`` (registered here): its state, its weights enum, its URL (a torch.hub hash name)."""
    state, data, name = torchvision_tiny.weights_file(seed=0)
    url = hub_standin.add_static(name, data)
    return state, torchvision_tiny.register(url), url


@pytest.fixture(scope="session")
def timm_resnet18(hub_standin) -> tuple[dict[str, torch.Tensor], str]:
    """timm's resnet18 keys and shapes, served as the hub repo ``timm/resnet18.a1_in1k``."""
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    commit = hub_standin.add_commit("timm/resnet18.a1_in1k", {"model.safetensors": save(state)})
    return state, commit


@pytest.fixture(scope="session")
def timm_test_vit(hub_standin) -> dict[str, torch.Tensor]:
    """timm's tiny ``test_vit``, served as ``pytorch_model.bin`` only (no safetensors)."""
    torch.manual_seed(2)
    state = timm.create_model("test_vit").state_dict()
    hub_standin.add_commit("timm/test_vit.r160_in1k", {"pytorch_model.bin": torch_bytes(state)})
    return state


def assert_same(ckpt, state: dict[str, torch.Tensor]) -> None:
    assert sorted(ckpt.keys()) == sorted(state)
    for key, value in state.items():
        assert torch.equal(ckpt.load(key), value), key


def test_bare_name_takes_torchvision_first_and_says_timm_has_it_too(tv_tiny, hub_standin) -> None:
    state, enum, url = tv_tiny
    with resolve("test_resnet", quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.TORCHVISION
        assert ckpt.origin.location == "torchvision:test_resnet.TINY_V1"
        assert ckpt.origin.details["resolution"] == (
            "bare name 'test_resnet': took torchvision's TestResNet_Weights.TINY_V1 (torchvision is looked up "
            "first); timm has test_resnet.r160_in1k too ('timm:test_resnet')"
        )
        assert ckpt.origin.sha256 == hashlib.sha256(hub_standin.static[url.rsplit("/", 1)[1]].data).hexdigest()
        assert ckpt.metadata["torchvision_weights"] == "TestResNet_Weights.TINY_V1"
        assert ckpt.metadata["label_names"] == torchvision_tiny.CATEGORIES
        assert ckpt.metadata["input_size"] == (3, 8, 8)
        assert "ImageClassification" in ckpt.metadata["transforms"]
        assert_same(ckpt, state)


@pytest.mark.parametrize("form", ["torchvision:test_resnet.TINY_V1", "torchvision:test_resnet", "member"])
def test_torchvision_forms_share_one_download_at_torch_hubs_name(tv_tiny, hub_standin, torch_checkpoints, form) -> None:
    state, enum, url = tv_tiny
    name = url.rsplit("/", 1)[1]
    with resolve(enum.DEFAULT if form == "member" else form, quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.TORCHVISION
        assert "resolution" not in ckpt.origin.details
        assert ckpt.origin.details["url"] == url
        assert ckpt.origin.files == (str(torch_checkpoints / name),)  # where torch.hub caches it too
        assert torch.equal(ckpt.load("fc.bias"), state["fc.bias"])
    assert len(hub_standin.requested(f"/static/{name}")) == 1


def test_a_file_at_torchvisions_real_name_that_is_not_the_real_file_is_refused_and_evicted(torch_checkpoints) -> None:
    cached = torch_checkpoints / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)  # resnet18-f37072fd.pth
    torch.manual_seed(0)
    cached.write_bytes(torch_bytes(torchvision.models.resnet18().state_dict()))
    with pytest.raises(
        IntegrityError,
        match=rf"sha256 mismatch for {ResNet18_Weights.IMAGENET1K_V1.url}: the cached copy {cached} has [0-9a-f]{{64}}, "
        r"expected f37072fd; removed it from the cache, so the next run downloads it again",
    ):
        resolve("torchvision:resnet18", quiet=True)
    assert not cached.exists()


def test_unknown_torchvision_weights_lists_the_real_ones() -> None:
    with pytest.raises(
        UnknownSourceError,
        match=r"torchvision model 'resnet18' has no weights 'NOPE'; choose one of "
        r"IMAGENET1K_V1 \(e.g. 'torchvision:resnet18.IMAGENET1K_V1'\), or leave it out for the default",
    ):
        resolve("torchvision:resnet18.NOPE")


def test_timm_name_resolves_through_the_hub(timm_resnet18) -> None:
    state, commit = timm_resnet18
    with resolve("timm:resnet18.a1_in1k", quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.TIMM
        assert ckpt.origin.location == "timm:resnet18.a1_in1k"
        assert ckpt.origin.revision == commit
        assert ckpt.origin.details["repo_id"] == "timm/resnet18.a1_in1k"
        meta = ckpt.metadata
        assert (meta["classifier"], meta["first_conv"], meta["num_classes"]) == ("fc", "conv1", 1000)
        assert meta["label_names"][0] == "n01440764" and meta["label_descriptions"][0].startswith("tench")
        assert meta["mean"] == (0.485, 0.456, 0.406) and meta["input_size"] == (3, 224, 224)
        assert_same(ckpt, state)


def test_bare_timm_only_name_falls_back_to_the_bin_like_timm(timm_test_vit, hub_standin) -> None:
    with resolve("test_vit", quiet=True) as ckpt:
        assert ckpt.origin.kind is SourceKind.TIMM
        assert ckpt.origin.details["resolution"] == (
            "bare name 'test_vit': took timm's test_vit.r160_in1k; torchvision has no such model"
        )
        assert ckpt.origin.details["files_in_repo"] == ["pytorch_model.bin"]
        assert (ckpt.metadata["classifier"], ckpt.metadata["first_conv"]) == ("head", "patch_embed.proj")
        assert_same(ckpt, timm_test_vit)
    asked = [p.rsplit("/", 1)[1] for m, p in hub_standin.requested("/timm/test_vit.r160_in1k/") if m == "HEAD"]
    assert asked[:2] == ["model.safetensors", "pytorch_model.bin"]


def test_unknown_name_suggests_the_closest_real_ones() -> None:
    with pytest.raises(
        UnknownSourceError,
        match=r"'resnet81' is not a path, URL, hub id or torchvision or timm model "
        r"name with pretrained weights; did you mean .*torchvision:resnet18",
    ) as info:
        resolve("resnet81")
    assert "timm:resnet18" in info.value.suggestions


def test_forced_registry_suggests_only_its_own_names() -> None:
    with pytest.raises(UnknownSourceError, match=r"'timm:resnet81' is not .* timm model name") as info:
        resolve("timm:resnet81")
    assert info.value.suggestions and all(s.startswith("timm:") for s in info.value.suggestions)


def test_suggest_ranks_the_closest_first() -> None:
    assert suggest("convnext_tniy")[0] == "torchvision:convnext_tiny"


def test_hub_candidates_mirror_timm() -> None:
    assert hub_candidates(None) == ("model.safetensors", "pytorch_model.bin")
    assert hub_candidates("weights.bin") == ("weights.safetensors", "weights.bin")
    assert hub_candidates("w.safetensors") == ("w.safetensors",)


def test_transfer_from_torchvision_and_timm_names(tv_tiny, timm_resnet18) -> None:
    from weightsurgery import transfer

    state = tv_tiny[0]
    tv_model = torchvision.models.get_model("test_resnet")
    report = transfer("torchvision:test_resnet", tv_model)
    assert len(report.mapping) == len(state) and not report.initialized
    assert torch.equal(tv_model.fc.weight, state["fc.weight"])

    timm_model = timm.create_model("resnet18")
    report = transfer("timm:resnet18.a1_in1k", timm_model)
    assert not report.initialized
    assert torch.equal(timm_model.conv1.weight, timm_resnet18[0]["conv1.weight"])
