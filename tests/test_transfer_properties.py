"""Invariants of transfer() on random module trees and random key sets (hypothesis).

- every target key is loaded xor kept (tied aliases follow their key);
- a loaded tensor equals its source, a kept one its value before the transfer;
- the report agrees with the model.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from weightsurgery import transfer

LAYERS = ("linear", "bn", "ln", "nested")


@st.composite
def module_trees(draw: st.DrawFn, depth: int = 0) -> nn.Module:
    n = draw(st.integers(1, 4))
    layers = []
    for _ in range(n):
        kind = draw(st.sampled_from(LAYERS if depth < 2 else LAYERS[:3]))
        width = draw(st.integers(1, 5))
        if kind == "linear":
            layers.append(nn.Linear(draw(st.integers(1, 5)), width, bias=draw(st.booleans())))
        elif kind == "bn":
            layers.append(nn.BatchNorm1d(width))
        elif kind == "ln":
            layers.append(nn.LayerNorm(width))
        else:
            layers.append(draw(module_trees(depth + 1)))
    return nn.Sequential(*layers)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=module_trees(),
    data=st.data(),
    prefix=st.sampled_from(["", "module.", "model.", "_orig_mod."]),
    seed=st.integers(0, 2**31 - 1),
)
def test_invariants(tree: nn.Module, data: st.DataObject, prefix: str, seed: int) -> None:
    torch.manual_seed(seed)
    keys = list(tree.state_dict())
    kept = data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
    reshaped = data.draw(st.lists(st.sampled_from(kept), unique=True, max_size=2)) if kept else []
    _check_invariants(tree, kept, reshaped, prefix, seed)


def _linear_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))


# Draws that once loaded a tensor from another key (issue 9). st.data() cannot go in an @example,
# so they run here on every CI run, whatever hypothesis draws.
@pytest.mark.parametrize("prefix", ["", "module.", "model.", "_orig_mod."])
@pytest.mark.parametrize(
    ("kept", "reshaped"),
    [
        (["1.bias"], ["1.bias"]),  # a BN bias refused for its shape went into the Linear's weight
        (["1.running_mean"], ["1.running_mean"]),
        (["1.weight"], ["1.weight"]),  # same role, but its name says it is 1.weight
    ],
)
def test_invariants_on_draws_that_failed(kept: list[str], reshaped: list[str], prefix: str) -> None:
    torch.manual_seed(0)
    _check_invariants(_linear_bn(), kept, reshaped, prefix, 0)


def _check_invariants(target: nn.Module, kept: list[str], reshaped: list[str], prefix: str, seed: int) -> None:
    torch.manual_seed(seed)
    source = {}
    for k in kept:
        t = torch.randn(target.state_dict()[k].shape) if target.state_dict()[k].is_floating_point() \
            else target.state_dict()[k] + 1
        if k in reshaped:
            t = torch.randn(*t.shape, 2)  # a different shape: must fall back to init
        source[prefix + k] = t

    before = {k: v.clone() for k, v in target.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(source, target, seed=seed)
    state = target.state_dict()

    statuses = {k: r.status for k, r in report.records.items()}
    assert set(statuses) == set(state)
    assert report.initialized == []
    assert set(report.mapping) | set(report.kept) == set(state) and set(report.kept) == set(report.missing_keys)
    assert not set(report.mapping) & set(report.kept)
    for t_key, s_key in report.mapping.items():
        assert torch.equal(state[t_key], source[s_key].to(state[t_key].dtype)), t_key
    for k in report.kept:
        assert torch.equal(state[k], before[k]), k
    for k in reshaped:
        assert statuses[k] == "kept"
        assert "shape mismatch" in report.records[k].evidence
    refused = any(r.evidence.startswith("not loaded: source and target look unrelated") for r in report.records.values())
    if refused:  # too many shape mismatches for a related pair: nothing loads (match/related.py)
        assert report.mapping == {} and set(report.unused) == set(source)
    else:
        # A reshaped tensor has another rank: in a numbered container (`0.weight`, `3.1.bias`) that says
        # the same number names another kind of layer, so its equal-shaped neighbours do not load by
        # name either (match/numbering.py): a Linear's bias never fills a BatchNorm's.
        shifted = {k for k in set(kept) - set(reshaped) if any(
            _numbered_container(r) == _numbered_container(k) is not None
            and not r.endswith("num_batches_tracked") for r in reshaped)}
        for k in shifted:  # structure, which pairs by signature and order, may still fill the key
            if k in report.mapping:
                assert report.mapping[k] == prefix + k and report.records[k].strategy == "structure", k
            else:
                assert report.records[k].status == "kept", k
        for k in set(kept) - set(reshaped) - shifted:
            assert report.mapping.get(k) == prefix + k
        left = {k for k in shifted if k not in report.mapping}
        assert set(report.unused) == {prefix + k for k in {*reshaped, *left}}
    for t_key, s_key in report.mapping.items():  # every loaded key read its own source key, never another's
        assert s_key == prefix + t_key, (t_key, s_key, report.records[t_key].strategy)
    for k, r in report.records.items():
        assert r.target_shape == tuple(state[k].shape)


def _numbered_container(key: str) -> str | None:
    """The container of a key whose module is a numbered child (``"3.1.bias"`` -> ``"3"``), else ``None``."""
    module = key.rpartition(".")[0]
    container, _, index = module.rpartition(".")
    return container if index.isdigit() else None
