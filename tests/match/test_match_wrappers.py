"""Wrappers on either side, in front or in the middle of a path: equal outputs after every transfer."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from weightsurgery import transfer
from weightsurgery.match.base import MatchContext
from weightsurgery.match.target import TargetSpec
from weightsurgery.match.wrappers import is_adapter_tensor, match_wrappers, unwrap
from weightsurgery.sources.checkpoint import TensorMeta

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def net() -> nn.Module:
    return torchvision.models.resnet18(num_classes=5).eval()


def pretrained() -> nn.Module:
    torch.manual_seed(1)
    model = net()
    for m in model.modules():  # non-trivial statistics, so a wrong BN copy shows in the outputs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


def run(src, dst, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transfer(src, dst, seed=0, **kw)


def raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under their module paths, wrapper components included (what FSDP dumps)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def checkpointed(model: nn.Module) -> nn.Module:
    model.layer1 = checkpoint_wrapper(model.layer1)  # a stage: layer1._checkpoint_wrapped_module.0.conv1
    model.layer3[1] = checkpoint_wrapper(model.layer3[1])  # a block: layer3.1._checkpoint_wrapped_module.conv1
    return model


class FSDPStyle(nn.Module):
    """What FSDP inserts per wrapped unit: ``<unit>._fsdp_wrapped_module.<rest>``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fsdp_wrapped_module(x)


def fsdp_style(model: nn.Module) -> nn.Module:
    for name in ("layer2", "layer4"):
        setattr(model, name, FSDPStyle(checkpoint_wrapper(getattr(model, name))))
    return model


def compiled_inside(model: nn.Module) -> nn.Module:
    model.layer2 = torch.compile(model.layer2, backend="eager")  # layer2._orig_mod.0.conv1
    return model


def parallel_inside(model: nn.Module) -> nn.Module:
    model.layer4 = nn.DataParallel(model.layer4)  # layer4.module.0.conv1
    return model


@pytest.mark.parametrize(
    "wrap",
    [nn.DataParallel, lambda m: torch.compile(m, backend="eager"), checkpointed, fsdp_style, compiled_inside,
     parallel_inside],
    ids=["DataParallel", "compile", "checkpoint_wrapper", "fsdp-style", "compile-inside", "DataParallel-inside"],
)
def test_plain_source_into_a_wrapped_target_and_back(wrap) -> None:
    source = pretrained()
    expected = source(X)
    target = wrap(net()).eval()
    assert any(k != unwrap(k) for k in TargetSpec.from_module(target).tensors)  # the wrapper shows in the keys
    report = run(source, target)
    assert not report.initialized and not report.unused
    torch.testing.assert_close(target(X), expected, rtol=0, atol=0)

    # the other way: the wrapped model's tensors, wrapper names and all, into a plain model
    back = net()
    report = run(raw_state(target), back)
    assert not report.initialized and not report.unused
    torch.testing.assert_close(back(X), expected, rtol=0, atol=0)


def test_wrapper_matches_say_which_components_they_removed() -> None:
    target = checkpointed(net())
    report = run(pretrained(), target)
    record = report.records["layer1._checkpoint_wrapped_module.0.conv1.weight"]
    assert (record.strategy, record.source) == ("wrappers", "layer1.0.conv1.weight")
    assert record.evidence == "unwrapped '_checkpoint_wrapped_module' (target)"


def test_ddp_world_size_one_both_directions(tmp_path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        source = pretrained()
        expected = source(X)
        target = DDP(net()).eval()
        assert all(k.startswith("module.") for k in target.state_dict())
        report = run(source, target)
        assert not report.initialized
        torch.testing.assert_close(target(X), expected, rtol=0, atol=0)
        back = net()
        assert not run(target.state_dict(), back).initialized
        torch.testing.assert_close(back(X), expected, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


def test_keys_that_unwrap_to_the_same_name_abstain_naming_both() -> None:
    target = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 2)))
    src = {k: TensorMeta((2, 2), torch.float32) for k in ("0.module.weight", "0._orig_mod.weight")}
    result = match_wrappers(MatchContext(src, target, ["0.weight"], list(src)))
    assert not result.matches
    [a] = result.abstentions
    assert a.target == "0.weight" and set(a.candidates) == set(src)
    assert "ambiguous once wrappers are removed" in a.reason


def test_adapter_tensors_are_recognised() -> None:
    assert is_adapter_tensor("base_model.model.q.lora_B.default.weight")
    assert is_adapter_tensor("emb.lora_embedding_A.default")
    assert not is_adapter_tensor("q.base_layer.weight") and not is_adapter_tensor("lora_A")


def test_a_wrapped_copy_of_the_source_in_the_same_checkpoint_is_not_a_second_candidate() -> None:
    # a plain model and its compiled alias saved side by side: exact wins first, the rest stays unused
    source = pretrained()
    both = {**source.state_dict(), **{f"_orig_mod.{k}": v for k, v in copy.deepcopy(source).state_dict().items()}}
    target = net()
    report = run(both, target)
    assert not report.initialized and all(r.strategy == "exact" for r in report.records.values())
    torch.testing.assert_close(target(X), source(X), rtol=0, atol=0)
