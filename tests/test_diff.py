"""``diff_checkpoints`` and ``compare_tensors``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from weightsurgery.diff import compare_tensors, diff_checkpoints


def test_diff_across_formats_and_containers(tmp_path: Path):
    torch.save({"model": {"w": torch.ones(2, 2), "b": torch.zeros(2), "x": torch.ones(1)}, "epoch": 1},
               tmp_path / "a.ckpt")
    save_file({"w": torch.ones(2, 2), "b": torch.tensor([0.0, 3.0]), "y": torch.ones(1)}, tmp_path / "b.safetensors")
    d = diff_checkpoints(tmp_path / "a.ckpt", tmp_path / "b.safetensors")
    assert d.a == f"torch-pickle {tmp_path / 'a.ckpt'} [model]"
    assert (d.only_a, d.only_b, d.equal) == (("x",), ("y",), ("w",))
    assert d.values["b"].max_abs == 3.0 and d.values["b"].differing == 1 and d.values["b"].rel == 1.0
    assert not d.identical
    assert d.to_dict()["values"]["b"] == {"max_abs": 3.0, "rel": 1.0, "differing": 1, "numel": 2}


def test_shape_and_dtype_changes():
    d = diff_checkpoints({"w": torch.ones(2), "h": torch.ones(2)}, {"w": torch.ones(3), "h": torch.ones(2).half()})
    assert d.shapes == {"w": ((2,), (3,))}
    assert d.dtypes == {"h": ("float32", "float16")} and d.equal == ("h",)


def test_atol_and_nan():
    a = {"w": torch.tensor([1.0, float("nan")])}
    assert diff_checkpoints(a, {"w": torch.tensor([1.0 + 1e-7, float("nan")])}, atol=1e-6).identical
    d = diff_checkpoints(a, {"w": torch.tensor([1.0, 0.0])})
    assert math.isnan(d.values["w"].max_abs) and d.to_dict()["values"]["w"]["max_abs"] == "nan"
    with pytest.raises(ValueError, match=r"atol=-1 must be a non-negative number"):
        diff_checkpoints(a, a, atol=-1)


tensors = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=16).map(torch.tensor)


@given(tensors)
def test_a_tensor_equals_itself(x: torch.Tensor):
    assert compare_tensors(x, x.clone()) is None


@given(tensors, st.data())
def test_difference_is_symmetric_and_bounded(x: torch.Tensor, data: st.DataObject):
    y = torch.tensor(data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(x), max_size=len(x))))
    ab, ba = compare_tensors(x, y), compare_tensors(y, x)
    if ab is None:
        assert ba is None and torch.equal(x.double(), y.double())
        return
    assert ba is not None
    assert (ab.max_abs, ab.differing) == (ba.max_abs, ba.differing)
    assert ab.rel == pytest.approx(ba.rel)
    assert 0 < ab.rel <= 2 + 1e-9  # ‖a-b‖ <= ‖a‖ + ‖b‖ <= 2 max(‖a‖, ‖b‖)
    assert ab.max_abs == pytest.approx(float((x.double() - y.double()).abs().max()))
