"""A fault at every step of apply leaves the model bit-for-bit unchanged (issue 11).

Hypothesis draws a transfer: the source's format (state dict, module,
safetensors, pickle) and dtype, an adapter (a grown vocabulary), init rules,
``freeze``, and the target (built, with a frozen flag and a submodule built
under inference mode; built on ``meta``; a factory). A clean run enumerates
the steps by instrumenting them (:mod:`faults`): each read, each adapter, each
init, each commit write. Then the transfer runs again once per step with a
fault there (an error or a real SIGINT, before or after the step), and the
model must be as it was: values, dtypes, ``requires_grad`` flags and the very
parameter objects in every slot.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from faults import InjectedFault, Steps
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from model_state import assert_unchanged, snapshot
from torch import nn

from weightsurgery import AdaptRule, transfer


class Scaled(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.scale = 1.0

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.scale = state["scale"]


class Net(nn.Module):
    def __init__(self, vocab: int = 6, classes: int = 3, blocks: int = 1, width: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
                                      for _ in range(blocks)])
        self.norm = Scaled(width)
        self.head = nn.Linear(width, classes)


def make_source(kind: str, dtype: torch.dtype, blocks: int, folder: Path) -> object:
    torch.manual_seed(1)
    model = Net(blocks=blocks)
    model.norm.scale = 2.0
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # other values than any target's
    if kind == "module":
        return model.to(dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    if kind == "safetensors":
        safetensors.torch.save_file(state, folder / "w.safetensors")
        return folder / "w.safetensors"
    if kind == "pth":
        torch.save(state, folder / "w.pth")
        return folder / "w.pth"
    return state


class Target:
    """Builds the same target afresh for every run, and keeps the model a factory built."""

    def __init__(self, kind: str, vocab: int, classes: int, blocks: int) -> None:
        self.kind, self.args = kind, (vocab, classes, blocks)
        self.built: list[nn.Module] = []
        self.before: dict | None = None

    def _net(self) -> Net:
        torch.manual_seed(0)
        return Net(*self.args)

    def factory(self) -> Net:
        model = self._net()
        if not self.built:  # the first build is the target; the constructor replay builds again
            self.built.append(model)
            self.before = snapshot(model)
        return model

    def make(self) -> object:
        """The ``dst`` to pass to transfer; sets :attr:`before` where the model exists already."""
        self.built, self.before = [], None
        if self.kind == "factory":
            return self.factory
        if self.kind == "meta":
            with torch.device("meta"):
                model = self._net()
        else:
            model = self._net()
            model.embed.weight.requires_grad_(False)  # a flag the user set
            with torch.inference_mode():
                model.blocks[0][1] = nn.BatchNorm1d(4)  # inference tensors, written inside inference mode
        self.built.append(model)
        self.before = snapshot(model)
        return model


transfers = st.fixed_dictionaries({
    "source": st.sampled_from(["state_dict", "module", "safetensors", "pth"]),
    "dtype": st.sampled_from([torch.float32, torch.float16]),
    "target": st.sampled_from(["built", "meta", "factory"]),
    "vocab": st.sampled_from([6, 8]),  # 8: the vocabulary adapter grows it (new rows: the mean)
    "new_rows": st.sampled_from(["mean", "init"]),  # "init": the fallback init fills the new rows
    "classes": st.sampled_from([3, 5]),  # 5: the head is a leftover
    "blocks": st.integers(1, 2),
    "init": st.sampled_from([None, {"head.*": "zeros"}, {"head.weight": "orthogonal", "*": "reset"}, "reset"]),
    "freeze": st.booleans(),
    "fault": st.sampled_from(["error", "interrupt"]),
    "when": st.sampled_from(["before", "after"]),
})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])  # each example runs ~30-50 transfers
@given(transfers)
def test_a_fault_at_every_step_of_apply_leaves_the_model_unchanged(case: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = make_source(case["source"], case["dtype"], case["blocks"], Path(tmp))
        target = Target(case["target"], case["vocab"], case["classes"], case["blocks"])
        options = dict(init=case["init"], freeze=case["freeze"], on_mismatch="adapt", seed=0, quiet=True,
                       adapt=[AdaptRule("embed.weight", "vocab", {"new_rows": case["new_rows"]})] if case["vocab"] == 8 else [])

        with Steps().installed() as clean:
            transfer(src, target.make(), **options)
        kinds = clean.kinds()
        assert {"read", "write"} <= kinds
        assert ("adapter" in kinds) == (case["vocab"] == 8)
        leftovers = case["classes"] == 5 or case["vocab"] == 8 and case["new_rows"] == "init"
        if leftovers and (case["target"] != "built" or case["init"] == "reset"):
            assert "init" in kinds

        for i, step in enumerate(clean.log):
            dst = target.make()
            with Steps(i, fault=case["fault"], when=case["when"]).installed() as steps, \
                    pytest.raises((InjectedFault, KeyboardInterrupt)):
                transfer(src, dst, **options)
            assert steps.log == clean.log[: i + 1], "the same steps, in the same order, up to the fault"
            if target.before is not None:  # a factory that failed before its first build has nothing to keep
                assert_unchanged(target.before, target.built[0])
            elif step[0] != "read":
                pytest.fail(f"{step}: the factory target was not built")
