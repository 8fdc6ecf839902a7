"""Optimizer state is never a source of weights: legacy and zip pickles, Lightning, flat dicts with moments."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import EmptyCheckpointError, UnsafeCheckpointError
from weightsurgery.sources import pickles
from weightsurgery.sources.files import open_path
from weightsurgery.sources.nested import unwrap
from weightsurgery.sources.optim_state import is_optimizer_key, is_optimizer_state, is_slot_mapping


class Tagger(nn.Module):
    """A two-layer LSTM and a head: every moment has the shape of a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class PerLayerTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.LSTM(3, 4, 1, batch_first=True), nn.LSTM(4, 4, 1, batch_first=True)])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return self.head(x)


def _seq() -> torch.Tensor:
    return torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(3))


def _trained(kind: str) -> tuple[Tagger, dict]:
    """A model after two optimizer steps, and the optimizer's state dict (moments of every weight's shape)."""
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=0.1) if kind == "adam" else torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9
    )
    for _ in range(2):
        opt.zero_grad()
        model(_seq()).pow(2).sum().backward()
        opt.step()
    return model, opt.state_dict()


def _slots(osd: dict, keys: str = "int") -> dict:
    return {(i if keys == "int" else str(i)): dict(s) for i, s in osd["state"].items()}


def _flat(osd: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}state.{i}.{k}": v for i, s in osd["state"].items() for k, v in s.items()}


LAYOUTS = {
    "model+optimizer": lambda sd, osd: {"model": sd, "optimizer": osd, "epoch": 2},
    "weights+optim": lambda sd, osd: {"weights": sd, "optim": osd},
    "unknown-key optimizer layout, string ids": lambda sd, osd: {
        "weights": sd,
        "trainer": {"state": _slots(osd, "str"), "param_groups": osd["param_groups"]},
    },
    "bare slot mappings": lambda sd, osd: {"weights": sd, "adam": _slots(osd, "str")},
    "lightning": lambda sd, osd: {
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "optimizer_states": [osd],
        "lr_schedulers": [],
        "global_step": 2,
    },
    "flat, moments beside weights": lambda sd, osd: {**sd, **_flat(osd)},
    "flat, prefixed": lambda sd, osd: {
        **{f"model.{k}": v for k, v in sd.items()},
        **_flat(osd, "optimizer."),
        "optimizer.param_groups.0.lr": torch.tensor(0.1),
    },
}


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_only_the_weights_load_never_a_moment(tmp_path: Path, kind: str, layout: str, zip_format: bool) -> None:
    model, osd = _trained(kind)
    sd = model.state_dict()
    path = tmp_path / ("last.ckpt" if layout == "lightning" else "train.pth")
    torch.save(LAYOUTS[layout](sd, osd), path, _use_new_zipfile_serialization=zip_format)
    moments = [v for s in osd["state"].values() for k, v in s.items() if k != "step"]
    assert len(moments) == (2 if kind == "adam" else 1) * len(sd)

    target = Tagger()
    report = transfer(str(path), target)
    assert set(report.loaded) == set(sd) and not report.initialized and report.unused == ()
    for key, value in target.state_dict().items():
        assert torch.equal(value, sd[key]), key
        assert not any(m.shape == value.shape and torch.equal(m, value) for m in moments), key
    flattened = len(_flat(osd)) + (1 if layout == "flat, prefixed" else 0)
    assert report.origin.details.get("optimizer_state") == (flattened if layout.startswith("flat") else None)


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_a_weight_missing_beside_its_moments_is_kept_not_filled_from_them(tmp_path: Path, zip_format) -> None:
    model, osd = _trained("adam")
    sd = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
    path = tmp_path / "partial.pth"
    torch.save({**sd, **_flat(osd)}, path, _use_new_zipfile_serialization=zip_format)
    target = Tagger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(str(path), target)
    assert report.kept == ["head.weight"] == report.missing_keys
    assert report.records["head.weight"].evidence == "no candidate in the source"
    assert report.mapping == {k: k for k in sd}


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_a_legacy_training_checkpoint_into_one_lstm_per_layer_gives_the_same_outputs(tmp_path: Path, zip_format):
    model, osd = _trained("adam")
    path = tmp_path / "tagger.pth"
    torch.save({"model": model.state_dict(), "optimizer": osd}, path, _use_new_zipfile_serialization=zip_format)
    target = PerLayerTagger()
    report = transfer(str(path), target)
    assert report.mapping["layers.1.weight_hh_l0"] == "rnn.weight_hh_l1"
    assert {r.strategy for k, r in report.records.items() if k.startswith("layers.")} == {"recurrent"}
    with torch.no_grad():
        torch.testing.assert_close(target(_seq()), model(_seq()))
    assert torch.equal(target.layers[1].bias_ih_l0, model.rnn.bias_ih_l1)


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_pickles_load_weights_only_and_nothing_is_memory_mapped(tmp_path: Path, monkeypatch, zip_format):
    calls: list[dict] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pickles.torch, "load", spy)
    path = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=zip_format)
    ckpt = open_path(path, key=None, weights_only=True)
    assert ckpt.keys() == ["fc.weight"]
    # a zip file is unpickled lazily by torch's weights-only unpickler and read with pread; a legacy one loads whole
    assert calls == ([] if zip_format else [{"map_location": "cpu", "weights_only": True, "mmap": False}])
    assert ckpt.owned is zip_format and torch.equal(ckpt.load("fc.weight"), torch.ones(2, 2))


class Hyper:
    """A custom class: a pickle holding one needs code to load."""


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_a_pickle_that_needs_code_is_refused_in_both_formats(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / "w.pth"
    torch.save({"model": {"w": torch.ones(1)}, "hyper": Hyper()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match=r"w\.pth is a pickle that needs code to load \(it needs \S*Hyper"):
        open_path(path, key=None, weights_only=True)


def test_a_file_of_flattened_moments_only_says_so() -> None:
    _, osd = _trained("sgd")
    with pytest.raises(EmptyCheckpointError, match=r"holds only optimizer state \(10 tensors such as state\.0\.mom"):
        unwrap(_flat(osd))


def test_recognizers() -> None:
    _, osd = _trained("adam")
    assert is_optimizer_state(osd) and not is_optimizer_state(osd["state"])
    assert is_slot_mapping(osd["state"][0]) and not is_slot_mapping({"step": torch.tensor(1.0)})
    assert is_optimizer_key("optimizer_states.0.state.1.exp_avg_sq") and is_optimizer_key("OPTIM.x")
    assert not is_optimizer_key("blocks.state.0.weight") and not is_optimizer_key("state.0.exp_avg.weight")
    found = unwrap({"net": {"w": torch.ones(1), "state.3.max_exp_avg_sq": torch.ones(1)}})
    assert list(found.tensors) == ["w"] and found.optimizer_state == ("state.3.max_exp_avg_sq",)
