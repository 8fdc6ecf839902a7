"""Layout checks across name matches: a square Linear weight whose siblings are stored transposed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.match.plan import Action
from weightsurgery.match.planner import make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


class Block(nn.Module):
    """A Linear-based block; a GPT-2 style checkpoint stores its weights as (in, out)."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(4, 12)
        self.c_proj = nn.Linear(4, 4)  # square: its layout cannot be seen from its shape
        self.c_fc = nn.Linear(4, 16)


def conv1d_state(block: Block) -> dict[str, torch.Tensor]:
    return {k: (v.t().contiguous() if k.endswith("weight") else v) for k, v in block.state_dict().items()}


def test_a_square_weight_is_not_copied_when_its_siblings_are_stored_transposed() -> None:
    src = Block()
    plan = make_plan({k: TensorMeta.of(v) for k, v in conv1d_state(src).items()}, TargetSpec.from_module(Block()))
    entry = plan.entries["c_proj.weight"]
    assert entry.action is Action.INIT  # never a silent plain copy
    assert "2 of 2 non-square Linear weights are stored transposed" in entry.evidence
    assert "pass on_mismatch='adapt' to transpose it" in entry.evidence
    assert plan.entries["c_proj.bias"].action is Action.LOAD


def test_under_adapt_the_whole_transposed_layout_is_transposed_and_outputs_agree() -> None:
    from weightsurgery import transfer

    src, dst = Block(), Block()
    report = transfer(conv1d_state(src), dst, on_mismatch="adapt")
    assert report.initialized == []
    assert {report.records[k].adapter for k in ("c_attn.weight", "c_proj.weight", "c_fc.weight")} == {"transpose"}
    x = torch.randn(3, 4)
    for name in ("c_attn", "c_proj", "c_fc"):
        torch.testing.assert_close(getattr(dst, name)(x), getattr(src, name)(x))


class ConvHead(nn.Module):
    """A conv with a non-square kernel, flattened into a Linear."""

    def __init__(self, names: tuple[str, str] = ("conv", "fc")) -> None:
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.Conv2d(2, 3, (1, 3)))
        setattr(self, names[1], nn.Linear(3 * 4 * 2, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2, 4, 4) -> (B, 3, 4, 2)
        return getattr(self, self.names[1])(getattr(self, self.names[0])(x).flatten(1))


def spatially_transposed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A port that stores maps as (C, W, H): kernels (kw, kh), and the Linear's input in (C, W, H) order."""
    out = {}
    for k, v in state.items():
        if v.dim() == 4:
            v = v.transpose(2, 3).contiguous()
        elif v.dim() == 2:
            v = v.reshape(v.shape[0], 3, 4, 2).transpose(2, 3).reshape(v.shape[0], -1).contiguous()
        out[k] = v
    return out


@pytest.mark.parametrize("names", [("conv", "fc"), ("conv", "dense")])
def test_a_linear_after_spatially_transposed_kernels_is_never_copied_plainly(names: tuple[str, str]) -> None:
    src = ConvHead(names)
    state = spatially_transposed(src.state_dict())
    dst = ConvHead()
    plan = make_plan({k: TensorMeta.of(v) for k, v in state.items()}, TargetSpec.from_module(dst))
    entry = plan.entries["fc.weight"]
    assert entry.action is Action.INIT, entry
    assert "layout trap" in entry.evidence and "conv.weight" in entry.evidence
    # the plain copy it refuses would indeed compute something else
    x = torch.randn(2, 2, 4, 4)
    plain = ConvHead()
    with torch.no_grad():
        plain.fc.weight.copy_(state[f"{names[1]}.weight"])
        plain.fc.bias.copy_(state[f"{names[1]}.bias"])
        plain.conv.weight.copy_(src.state_dict()[f"{names[0]}.weight"])
        plain.conv.bias.copy_(src.state_dict()[f"{names[0]}.bias"])
        assert not torch.allclose(plain(x), src(x))
