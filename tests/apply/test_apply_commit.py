"""Commit is a transaction (issue 11): an error or a Ctrl-C in the middle undoes every write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from faults import InjectedFault, Steps
from model_state import assert_unchanged, snapshot
from torch import nn

import weightsurgery._device as device_module
from weightsurgery import transfer
from weightsurgery.errors import ModuleProtocolError


class Scaled(nn.Module):
    """A module with extra state, to show it is put back too."""

    def __init__(self, scale: float = 1.0, picky: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scale, self.picky = scale, picky

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        if self.picky:
            raise ValueError("wrong version")
        self.scale = state["scale"]


def net(scale: float = 1.0, picky: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), Scaled(scale), Scaled(scale, picky=picky))
    model[1].bias.requires_grad_(False)  # a flag the user set: it must survive a rollback
    return model


def source() -> dict[str, object]:
    """Other values for every tensor, and scale 2.0 as the modules' extra state."""
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) if isinstance(v, torch.Tensor) else {"scale": 2.0}
            for k, v in net().state_dict().items()}


N_TENSORS = sum(isinstance(v, torch.Tensor) for v in source().values())


def writes(**kwargs) -> list[tuple[str, str]]:
    with Steps().installed() as steps:
        transfer(source(), net(), **kwargs)
    return [s for s in steps.log if s[0] == "write"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_real_sigint_at_every_commit_write_leaves_the_model_unchanged(when: str) -> None:
    done = writes(freeze=True)
    assert [m for _, m in done].count("write") == N_TENSORS
    assert [m for _, m in done].count("set_extra_state") == 2 and ("write", "set_requires_grad") in done
    for i in range(N_TENSORS, N_TENSORS + len(done)):  # the steps after the reads are the commit's
        model = net()
        before = snapshot(model)
        with Steps(fail_at=i, fault="interrupt", when=when).installed() as steps, pytest.raises(KeyboardInterrupt):
            transfer(source(), model, freeze=True)
        assert steps.log[-1][0] == "write"
        assert_unchanged(before, model)
        assert model[2].scale == 1.0


def test_a_meta_built_target_gets_its_own_parameter_objects_back() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied: one object in two slots
    state = {k: torch.ones(v.shape) for k, v in model.state_dict().items()}
    before = snapshot(model)
    with Steps().installed() as steps:
        transfer(state, nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)))
    with Steps(fail_at=len(steps.log) - 1, when="after").installed(), pytest.raises(InjectedFault):
        transfer(state, model, freeze=True)
    assert_unchanged(before, model)
    assert model[0].weight.is_meta and model[1].weight is model[0].weight
    transfer(state, model)  # and the same transfer without the fault works
    assert model[1].weight is model[0].weight and torch.equal(model[0].weight, torch.ones(3, 3))


def test_a_frozen_inference_tensor_gets_its_flag_back() -> None:
    model = net()
    with torch.inference_mode():
        model[0] = nn.Linear(3, 3)  # requires_grad=True can be set back on it only inside inference mode
    before = snapshot(model)
    with Steps().installed() as steps:
        transfer(source(), net(), freeze=True)
    with Steps(fail_at=len(steps.log) - 1, when="after").installed(), pytest.raises(InjectedFault):
        transfer(source(), model, freeze=True)
    assert_unchanged(before, model)
    assert model[0].weight.requires_grad and model[0].weight.is_inference()


def test_a_raising_set_extra_state_undoes_the_tensors_and_the_other_modules_extra_state() -> None:
    model = net(picky=True)
    before = snapshot(model)
    with pytest.raises(ModuleProtocolError, match=r"module '3' \(Scaled\) refused .*wrong version.*nothing was changed"):
        transfer(net(scale=5.0), model)
    assert_unchanged(before, model)
    assert model[2].scale == 1.0  # set to 5.0 before module 3 refused, then put back


def test_a_second_ctrl_c_during_the_rollback_waits_until_it_is_done(monkeypatch) -> None:
    model = net()
    before = snapshot(model)
    real = device_module.copy_into
    calls: list[str] = []

    def copy(dst: torch.Tensor, value: torch.Tensor, **kwargs) -> None:
        calls.append("copy")
        if len(calls) == 3:  # the first undo: two writes were made, the second one raised after
            signal.raise_signal(signal.SIGINT)
        real(dst, value, **kwargs)

    monkeypatch.setattr(device_module, "copy_into", copy)
    with Steps(fail_at=N_TENSORS + 1, when="after").installed(), pytest.raises(KeyboardInterrupt) as info:
        transfer(source(), model)
    assert isinstance(info.value.__context__, InjectedFault)  # raised once the rollback had finished
    assert len(calls) == 4
    assert_unchanged(before, model)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    from model_state import assert_unchanged, snapshot
    import weightsurgery.apply.commit as commit
    from weightsurgery import transfer

    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    before = snapshot(model)
    real, count = commit.Commit.write, [0]

    def write(self, dst, value):
        real(self, dst, value)
        count[0] += 1
        if count[0] == 7:  # seven tensors are in: now the parent presses Ctrl-C
            print("writing", flush=True)
            time.sleep(60)

    commit.Commit.write = write
    try:
        transfer(state, model)
    except KeyboardInterrupt:
        assert_unchanged(before, model)
        print(f"interrupted after {count[0]} writes; model unchanged", flush=True)
        sys.exit(0)
    sys.exit(3)
""")


def test_ctrl_c_from_another_process_in_the_middle_of_commit() -> None:
    here = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, here], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out.strip() == "interrupted after 7 writes; model unchanged"
