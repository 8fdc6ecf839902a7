"""Keras files made by Keras 3 (JAX backend), read with h5py alone, proven by the outputs they compute."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.sources import resolve

RNG = np.random.default_rng(0)


def _randomize_bn(layer: Any) -> None:
    gamma, beta, mean, var = layer.get_weights()
    layer.set_weights([
        RNG.normal(1, 0.2, gamma.shape), RNG.normal(0, 0.2, beta.shape),
        RNG.normal(0, 0.5, mean.shape), RNG.uniform(0.5, 2.0, var.shape),
    ])


@pytest.fixture(scope="session")
def keras_cnn(keras: Any, framework_dir: Path) -> tuple[Any, dict[str, Path]]:
    """A CNN with BN, a depthwise conv, a square 3x3 conv (16 -> 16), Flatten and a square Dense."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(8, 3, padding="same", name="stem"),
        L.BatchNormalization(name="stem_bn"),
        L.ReLU(),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
        L.BatchNormalization(name="dw_bn"),
        L.ReLU(),
        L.Conv2D(16, 3, padding="same", name="square"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(12, name="fc1"),
        L.Dense(12, name="fc2_square"),
    ])
    for name in ("stem_bn", "dw_bn"):
        _randomize_bn(model.get_layer(name))
    files = {"keras": framework_dir / "cnn.keras", "h5": framework_dir / "cnn.h5",
             "weights": framework_dir / "cnn.weights.h5"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(files["keras"])
        model.save(files["h5"])  # Keras's legacy HDF5 format
        model.save_weights(files["weights"])
    return model, files


class TorchCNN(nn.Module):
    """The same network in PyTorch, named as PyTorch code names it (nothing in common with Keras's names)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, eps=eps), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16, eps=eps), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 12), nn.Linear(12, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _keras_out(model: Any, x_nhwc: np.ndarray) -> np.ndarray:
    return np.asarray(model(x_nhwc, training=False))


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_keras_cnn_computes_the_same_in_torch(keras_cnn: tuple[Any, dict[str, Path]], kind: str) -> None:
    model, files = keras_cnn
    x = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
    target = TorchCNN(eps=1e-3).eval()
    report = transfer(files[kind], target)
    assert len(report.mapping) == len(target.state_dict()) - 2  # every tensor but the two num_batches_tracked
    with torch.no_grad():
        got = target(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, _keras_out(model, x), rtol=1e-4, atol=1e-5)
    evidence = report.records["features.6.weight"].evidence
    assert "source layout conv" in evidence and "keras Conv2D 'square'" in evidence
    assert "flatten" in report.records["head.1.weight"].evidence
    assert "source layout dense" in report.records["head.2.weight"].evidence


def test_keras_checkpoint_is_lazy_and_in_torch_layout(keras_cnn: tuple[Any, dict[str, Path]]) -> None:
    model, files = keras_cnn
    with resolve(files["keras"]) as ckpt:
        assert list(ckpt.keys())[:4] == ["stem.weight", "stem.bias", "stem_bn.weight", "stem_bn.bias"]
        assert ckpt.metas["dw.weight"].shape == (16, 1, 3, 3)  # (kh, kw, in, mult) -> (in*mult, 1, kh, kw)
        assert ckpt.metas["fc1.weight"].shape == (12, 256)
        assert ckpt.metadata["order"] == "the layer order of config.json"
        assert ckpt.metadata["layouts"]["fc1.weight"]["args"] == {"shape": [4, 4, 16], "channels_last": True}
        assert ckpt.metadata["epsilon"]["stem_bn.running_var"] == pytest.approx(1e-3)
        kernel = model.get_layer("square").get_weights()[0]  # (kh, kw, in, out)
        np.testing.assert_array_equal(ckpt.load("square.weight").numpy(), kernel.transpose(3, 2, 0, 1))


def test_keras_epsilon_differs_warns(keras_cnn: tuple[Any, dict[str, Path]]) -> None:
    _, files = keras_cnn
    with pytest.warns(UserWarning, match=r"epsilon differs: 2 target normalization\(s\) \(features.1, features.4\) "
                                         r"use eps=1e-05 and the source used 0.001"):
        report = transfer(files["keras"], TorchCNN(eps=1e-5))
    assert any("epsilon differs" in w for w in report.warnings)


def test_keras_weights_without_config_load_nothing(keras_cnn: tuple[Any, dict[str, Path]]) -> None:
    _, files = keras_cnn
    target = TorchCNN()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(files["weights"], target)
    assert report.mapping == {}
    for record in report.records.values():  # each key says why: the source's layouts are undecided
        assert "undecided layout" in record.evidence and "without a model config" in record.evidence
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.fixture(scope="session")
def keras_rnn(keras: Any, framework_dir: Path) -> tuple[Any, Path]:
    L = keras.layers
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, return_sequences=True, name="lstm"), L.GRU(6, name="gru")])
    lstm = model.get_layer("lstm")
    k, rk, b = lstm.get_weights()
    lstm.set_weights([k, rk, RNG.normal(0, 0.5, b.shape)])  # a bias that is not Keras's init
    gru = model.get_layer("gru")
    k, rk, b = gru.get_weights()
    gru.set_weights([k, rk, RNG.normal(0, 0.5, b.shape)])  # (2, 3u): input and recurrent biases differ
    path = framework_dir / "rnn.keras"
    model.save(path)
    return model, path


class TorchRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 4, batch_first=True)
        self.decoder = nn.GRU(4, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.decoder(self.encoder(x)[0])
        return y[:, -1]


@pytest.mark.slow  # Keras compiles both recurrent layers
def test_keras_lstm_gru_compute_the_same_in_torch(keras_rnn: tuple[Any, Path]) -> None:
    model, path = keras_rnn
    x = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    target = TorchRNN()
    report = transfer(path, target)
    assert len(report.mapping) == 8
    assert "gates z,r,h" in report.records["decoder.weight_ih_l0"].evidence
    with torch.no_grad():
        got = target(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-4, atol=1e-5)


def test_keras_gru_without_reset_after_is_refused(keras: Any, framework_dir: Path) -> None:
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.GRU(6, reset_after=False, name="gru")])
    path = framework_dir / "gru_v1.keras"
    model.save(path)
    target = nn.Module()
    target.gru = nn.GRU(4, 6, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(path, target)
    assert report.mapping == {}
    assert "reset_after=False" in report.records["gru.weight_ih_l0"].evidence
