"""Everything that can fail is checked before the first write (issue 11): each case was a half-written model."""

from __future__ import annotations

import warnings

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import ModuleProtocolError, UnsupportedTensorError
from weightsurgery.sources.checkpoint import Checkpoint


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def fresh_state(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in model.state_dict().items()}


def test_a_sparse_source_tensor_is_refused_before_anything_is_written() -> None:
    model = net()
    state = fresh_state(model)
    state["1.weight"] = state["1.weight"].to_sparse()  # staged last: 0.* would already be written
    before = snapshot(model)
    with pytest.raises(UnsupportedTensorError, match=r"'1\.weight' in state-dict .* is sparse \(torch\.sparse_coo\).*"
                                                     r"to_dense\(\)") as info:
        transfer(state, model)
    assert info.value.key == "1.weight"
    assert_unchanged(before, model)


def test_a_sparse_csr_source_tensor_is_refused_too() -> None:
    model = net()
    state = fresh_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        state["1.weight"] = state["1.weight"].to_sparse_csr()
    before = snapshot(model)
    with pytest.raises(UnsupportedTensorError, match=r"torch\.sparse_csr"):
        transfer(state, model)
    assert_unchanged(before, model)


@pytest.mark.parametrize("as_file", [False, True])
def test_meta_tensors_in_the_source_name_the_key_and_the_file(tmp_path, as_file: bool) -> None:
    model = net()
    state = fresh_state(model)
    state["1.weight"] = torch.empty(4, 4, device="meta")  # saved from a model built on meta: shapes, no data
    src: object = state
    if as_file:
        torch.save(state, tmp_path / "meta.pth")
        src = tmp_path / "meta.pth"
    before = snapshot(model)
    where = "meta.pth" if as_file else "state-dict"
    with pytest.raises(UnsupportedTensorError, match=rf"'1\.weight' in .*{where}.* is on the meta device.*no data"):
        transfer(src, model)
    assert_unchanged(before, model)


def test_a_complex_source_into_a_real_target_is_refused_not_truncated() -> None:
    model = net()
    state = fresh_state(model)
    state["1.bias"] = torch.randn(4, dtype=torch.complex64)
    before = snapshot(model)
    with pytest.raises(UnsupportedTensorError, match=r"'1\.bias' .* complex64 .* float32.*imaginary"):
        transfer(state, model)
    assert_unchanged(before, model)


def test_an_expanded_target_buffer_is_refused_before_any_read(monkeypatch) -> None:
    model = net()
    model[1].register_buffer("scale", torch.ones(1).expand(4))  # four elements, one memory location
    state = fresh_state(model)
    reads: list[str] = []
    load = Checkpoint.load
    monkeypatch.setattr(Checkpoint, "load", lambda self, key: reads.append(key) or load(self, key))
    before = snapshot(model)
    with pytest.raises(ModuleProtocolError, match=r"'1\.scale' of module '1' is an expand\(\)ed view.*clone\(\)") as info:
        transfer(state, model)
    assert info.value.module == "1" and reads == []
    assert_unchanged(before, model)


def test_a_sparse_target_parameter_is_refused_before_any_write() -> None:
    model = net()
    model[1].weight = nn.Parameter(torch.eye(4).to_sparse())
    state = fresh_state(net())
    before = snapshot(model)
    with pytest.raises(ModuleProtocolError, match=r"'1\.weight' .* sparse"):
        transfer(state, model)
    assert_unchanged(before, model)


def test_a_submodule_built_under_inference_mode_is_loaded() -> None:
    model = net()
    with torch.inference_mode():
        model[1] = nn.Linear(4, 4)  # inference tensors: copy_ outside inference mode raises
    state = fresh_state(model)
    report = transfer(state, model, freeze=True)
    assert len(report.mapping) == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model[1].weight.is_inference() and not model[1].weight.requires_grad


def test_transfer_inside_inference_mode_into_a_normal_model() -> None:
    model = net()
    state = fresh_state(model)
    with torch.inference_mode():
        transfer(state, model)
    assert not model[0].weight.is_inference() and torch.equal(model[0].weight.detach(), state["0.weight"])
