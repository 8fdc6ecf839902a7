"""The adapter registry and run_adapter's contract: names, options, fill, shapes, purity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightsurgery.adapt import ADAPTERS, get_adapter, register_adapter, run_adapter
from weightsurgery.adapt.registry import _REGISTRY
from weightsurgery.errors import AdapterError

BUILTIN = {"head", "input_channels", "pos_embed", "patch_embed", "vocab", "fuse", "split", "transpose", "reshape"}


def test_builtin_adapters_are_registered_with_docs():
    assert set(ADAPTERS) >= BUILTIN
    for name in BUILTIN:
        adapter = get_adapter(name)
        assert adapter.name == name
        assert adapter.doc and "\n" not in adapter.doc


def test_unknown_adapter_lists_registered_names():
    with pytest.raises(AdapterError, match=r"no adapter named 'nope'; registered adapters: fuse, head, input_channels"):
        get_adapter("nope")


def test_unknown_option_is_named_with_the_valid_ones():
    with pytest.raises(
        AdapterError, match=r"fc.weight: adapter 'split' got unknown option\(s\) size; it takes dim, index, sizes"
    ):
        run_adapter("split", [torch.zeros(4)], (2,), {"index": 0, "size": [2, 2]}, key="fc.weight")


def test_missing_option_is_named():
    with pytest.raises(AdapterError, match=r"adapter 'split' needs option\(s\) index, sizes"):
        run_adapter("split", [torch.zeros(4)], (2,), {})


def test_wrong_result_shape_is_refused():
    with pytest.raises(
        AdapterError, match=r"w: adapter 'transpose' returned shape \(3, 2\) but the target needs \(2, 3\)"
    ):
        run_adapter("transpose", [torch.zeros(2, 3)], (2, 3), {}, key="w")


def test_new_rows_need_fill():
    assert get_adapter("head").needs_fill({"rows": [0, -1]})
    assert not get_adapter("head").needs_fill({"rows": [1, 0]})
    with pytest.raises(AdapterError, match=r"creates new rows and needs fill="):
        run_adapter("head", [torch.zeros(2, 3)], (2, 3), {"rows": [0, -1]})
    with pytest.raises(AdapterError, match=r"fill has shape \(1, 3\), expected the target's \(2, 3\)"):
        run_adapter("head", [torch.zeros(2, 3)], (2, 3), {"rows": [0, -1]}, fill=torch.zeros(1, 3))


def test_register_rejects_duplicates_and_positional_options():
    with pytest.raises(AdapterError, match=r"an adapter named 'head' is already registered"):
        register_adapter("head")(lambda tensors, target_shape: tensors[0])

    def positional(tensors, target_shape, scale):  # pragma: no cover - never called
        return tensors[0]

    with pytest.raises(AdapterError, match=r"make every option keyword-only"):
        register_adapter("test_positional")(positional)
    assert "test_positional" not in ADAPTERS


def test_custom_adapter_runs_and_is_listed():
    @register_adapter("test_scale")
    def _scale(tensors, target_shape, *, factor: float = 2.0):
        """Multiply by ``factor``."""
        return tensors[0] * factor

    try:
        assert get_adapter("test_scale").doc == "Multiply by ``factor``."
        assert run_adapter("test_scale", [torch.ones(2)], (2,), {"factor": 3.0}).tolist() == [3.0, 3.0]
    finally:
        _REGISTRY.pop("test_scale")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    data=st.data(),
)
def test_adapters_never_mutate_their_inputs(rows, cols, data):
    weight = torch.randn(rows, cols)
    before = weight.clone()
    picks = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=6))
    run_adapter("head", [weight], (len(picks), cols), {"rows": picks})
    run_adapter("transpose", [weight], (cols, rows), {})
    run_adapter("vocab", [weight], (rows + 2, cols), {"new_rows": "covariance", "seed": 1})
    run_adapter("split", [weight], (1, cols), {"index": 0, "sizes": [1, rows - 1]})
    run_adapter("reshape", [weight], (rows * cols,), {})
    assert torch.equal(weight, before)
