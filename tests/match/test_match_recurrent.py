"""The recurrent strategy: multi-layer LSTM/GRU/RNN <-> one module per layer <-> cell stacks, proven by outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.match.base import MatchContext
from weightsurgery.match.recurrent import gates_of, match_recurrent
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

IN, HID, LAYERS = 5, 6, 3
F32 = torch.float32
CELLS = {nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell, nn.RNN: nn.RNNCell}


class Multi(nn.Module):
    """One multi-layer recurrent module, as most checkpoints store it."""

    def __init__(self, cls: type = nn.LSTM, bi: bool = False, layers: int = LAYERS, hid: int = HID, **kw) -> None:
        super().__init__()
        self.rnn = cls(IN, hid, layers, batch_first=True, bidirectional=bi, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class PerLayer(nn.Module):
    """One single-layer module per layer, run in sequence."""

    def __init__(self, cls: type = nn.LSTM, bi: bool = False, layers: int = LAYERS, proj: int = 0) -> None:
        super().__init__()
        width = (proj or HID) * (2 if bi else 1)
        kw = {"proj_size": proj} if proj else {}
        self.layers = nn.ModuleList(
            cls(IN if k == 0 else width, HID, 1, batch_first=True, bidirectional=bi, **kw) for k in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return x


class Cells(nn.Module):
    """One cell per layer, stepped over time."""

    def __init__(self, cls: type = nn.LSTM, layers: int = LAYERS, hid: int = HID) -> None:
        super().__init__()
        self.lstm = cls is nn.LSTM
        self.cells = nn.ModuleList(CELLS[cls](IN if k == 0 else hid, hid) for k in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, hid = x.shape[0], self.cells[0].hidden_size
        h = [x.new_zeros(batch, hid) for _ in self.cells]
        c = [x.new_zeros(batch, hid) for _ in self.cells]
        outs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for k, cell in enumerate(self.cells):
                if self.lstm:
                    h[k], c[k] = cell(inp, (h[k], c[k]))
                else:
                    h[k] = cell(inp, h[k])
                inp = h[k]
            outs.append(inp)
        return torch.stack(outs, 1)


class BiCells(nn.Module):
    """A bidirectional stack as two cell stacks, the backward one stepped from the end."""

    def __init__(self, cls: type = nn.LSTM, layers: int = LAYERS, names: tuple[str, str] = ("fwd_cells", "bwd_cells")):
        super().__init__()
        self.lstm, self.names = cls is nn.LSTM, names
        for name in names:
            setattr(self, name, nn.ModuleList(CELLS[cls](IN if k == 0 else 2 * HID, HID) for k in range(layers)))

    def _run(self, cell: nn.Module, x: torch.Tensor, steps: range) -> list[torch.Tensor]:
        h = c = x.new_zeros(x.shape[0], HID)
        out = [h] * x.shape[1]
        for t in steps:
            if self.lstm:
                h, c = cell(x[:, t], (h, c))
            else:
                h = cell(x[:, t], h)
            out[t] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd, bwd = (getattr(self, n) for n in self.names)
        steps = x.shape[1]
        for f, b in zip(fwd, bwd, strict=True):
            ahead, back = self._run(f, x, range(steps)), self._run(b, x, range(steps - 1, -1, -1))
            x = torch.stack([torch.cat(pair, 1) for pair in zip(ahead, back, strict=True)], 1)
        return x


def _seq() -> torch.Tensor:
    return torch.randn(2, 7, IN, generator=torch.Generator().manual_seed(1))


def _transfer(src: nn.Module, dst: nn.Module):
    """Transfer and check outputs: different before, the same after."""
    torch.manual_seed(0)
    src.eval(), dst.eval()
    x = _seq()
    with torch.no_grad():
        expected = src(x)
        assert not torch.allclose(dst(x), expected)
        report = transfer(src, dst)
        torch.testing.assert_close(dst(x), expected)
    return report


def _strategies(report) -> set[str | None]:
    return {r.strategy for r in report.records.values()}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bi", [False, True], ids=["forward", "bidirectional"])
def test_multi_layer_into_one_module_per_layer_and_back(cls, bi):
    report = _transfer(Multi(cls, bi), PerLayer(cls, bi))
    rev = ["", "_reverse"] if bi else [""]
    assert report.mapping == {
        f"layers.{k}.{w}_{m}_l0{r}": f"rnn.{w}_{m}_l{k}{r}"
        for k in range(LAYERS)
        for r in rev
        for w, m in [("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh")]
    }
    assert _strategies(report) == {"recurrent"} and not report.unused
    assert "layer 2 weight_hh of multi 'rnn' -> layers 'layers.*'" in report.records["layers.2.weight_hh_l0"].evidence

    back = _transfer(PerLayer(cls, bi), Multi(cls, bi))
    assert back.mapping == {s: t for t, s in report.mapping.items()}
    assert _strategies(back) == {"recurrent"}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_multi_layer_into_a_cell_stack_stepped_over_time_and_back(cls):
    report = _transfer(Multi(cls), Cells(cls))
    assert report.mapping["cells.1.weight_hh"] == "rnn.weight_hh_l1"
    assert report.mapping["cells.2.bias_ih"] == "rnn.bias_ih_l2"
    assert len(report.mapping) == 4 * LAYERS and _strategies(report) == {"recurrent"}

    back = _transfer(Cells(cls), Multi(cls))
    assert back.mapping["rnn.weight_ih_l0"] == "cells.0.weight_ih"
    assert len(back.mapping) == 4 * LAYERS and _strategies(back) == {"recurrent"}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_bidirectional_into_a_forward_and_a_backward_cell_stack_and_back(cls):
    report = _transfer(Multi(cls, True), BiCells(cls))
    assert report.mapping["fwd_cells.1.weight_ih"] == "rnn.weight_ih_l1"
    assert report.mapping["bwd_cells.1.weight_ih"] == "rnn.weight_ih_l1_reverse"
    assert report.mapping["bwd_cells.2.bias_hh"] == "rnn.bias_hh_l2_reverse"
    assert len(report.mapping) == 2 * 4 * LAYERS and _strategies(report) == {"recurrent"}
    back = _transfer(BiCells(cls, names=("cells_fw", "cells_bw")), Multi(cls, True))
    assert back.mapping["rnn.weight_hh_l0_reverse"] == "cells_bw.0.weight_hh"
    assert len(back.mapping) == 2 * 4 * LAYERS


def test_cell_stacks_without_a_direction_pair_are_not_merged():
    spec = TargetSpec.from_module(BiCells(nn.GRU, names=("left", "right")))
    src = Multi(nn.GRU, True)
    metas = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in src.state_dict().items()}
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches
    heads = {a.reason.split(":")[0] for a in result.abstentions}
    assert heads == {"recurrent stack disagrees with 'rnn' (directions 2 vs 1)"}


class OneCell(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm_cell = nn.LSTMCell(IN, HID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, outs = None, []
        for t in range(x.shape[1]):
            state = self.lstm_cell(x[:, t], state)
            outs.append(state[0])
        return torch.stack(outs, 1)


def test_a_lone_cell_and_a_single_layer_lstm_map_into_each_other():
    report = _transfer(OneCell(), Multi(nn.LSTM, layers=1))
    assert report.mapping == {f"rnn.{k}_l0": f"lstm_cell.{k}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    assert _strategies(report) == {"recurrent"}
    back = _transfer(Multi(nn.LSTM, layers=1), OneCell())
    assert back.mapping == {s: t for t, s in report.mapping.items()}


def test_cells_and_per_layer_modules_map_into_each_other():
    report = _transfer(Cells(nn.GRU), PerLayer(nn.GRU))
    assert report.mapping["layers.2.weight_ih_l0"] == "cells.2.weight_ih"
    assert _strategies(report) == {"recurrent"}


@pytest.mark.parametrize("bi", [False, True], ids=["forward", "bidirectional"])
def test_lstm_projections_map_per_layer(bi):
    report = _transfer(Multi(nn.LSTM, bi, proj_size=4), PerLayer(nn.LSTM, bi, proj=4))
    assert report.mapping["layers.1.weight_hr_l0"] == "rnn.weight_hr_l1"
    if bi:
        assert report.mapping["layers.2.weight_hr_l0_reverse"] == "rnn.weight_hr_l2_reverse"
    assert len(report.mapping) == LAYERS * 5 * (2 if bi else 1)
    back = _transfer(PerLayer(nn.LSTM, bi, proj=4), Multi(nn.LSTM, bi, proj_size=4))
    assert back.mapping["rnn.weight_hr_l0"] == "layers.0.weight_hr_l0"


def test_a_wrapper_prefix_and_a_nested_target_path():
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = PerLayer(nn.LSTM, True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)

    src = Multi(nn.LSTM, True)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = Encoder()
    report = transfer(state, dst)
    assert report.mapping["encoder.layers.1.weight_ih_l0_reverse"] == "module.rnn.weight_ih_l1_reverse"
    with torch.no_grad():
        torch.testing.assert_close(dst(_seq()), src(_seq()))


def _quiet_transfer(src: nn.Module, dst: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transfer(src, dst, dry_run=True)


@pytest.mark.parametrize(
    ("src", "dst", "why"),
    [
        (Multi(nn.LSTM, layers=2), PerLayer(nn.LSTM), "layers 2 vs 3"),
        (Multi(nn.LSTM, bi=True), Cells(nn.LSTM), "directions 2 vs 1"),
        (Multi(nn.GRU, hid=8), PerLayer(nn.GRU), "hidden size 8 vs 6"),
        (Multi(nn.LSTM, hid=3), Cells(nn.GRU, hid=4), "kind LSTM vs GRU"),
    ],
    ids=["layers", "direction", "hidden", "gates"],
)
def test_a_stack_that_disagrees_abstains_with_the_reason_and_loads_nothing(src, dst, why):
    report = _quiet_transfer(src, dst)
    assert report.mapping == {}
    for key in dst.state_dict():
        record = report.records[key]
        assert record.status == "kept" and record.strategy == "recurrent"
        assert why in record.evidence and "'rnn'" in record.evidence


def test_gru_and_lstm_of_equal_row_counts_are_told_apart_by_the_module_type():
    """A GRU of hidden 4 stacks 12 rows like an LSTM of hidden 3: equal weight_ih shapes, different kinds."""

    class MyLSTM(nn.LSTM):
        pass

    assert gates_of(nn.GRU) == 3 and gates_of(nn.LSTMCell) == 4 and gates_of(MyLSTM) == 4
    assert gates_of(nn.Linear) is None
    target = nn.Module()
    target.layers = nn.ModuleList([MyLSTM(IN, 3), MyLSTM(3, 3)])
    spec = TargetSpec.from_module(target)
    metas = {f"gru.{k}": TensorMeta(tuple(v.shape), v.dtype) for k, v in nn.GRU(IN, 4, 2).state_dict().items()}
    assert metas["gru.weight_ih_l0"].shape == spec.tensors["layers.0.weight_ih_l0"].shape == (12, IN)
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches
    (reason,) = {a.reason for a in result.abstentions}
    assert reason.startswith("recurrent stack disagrees with 'gru' (kind GRU vs LSTM, hidden size 4 vs 3")
    assert all(a.final for a in result.abstentions) and len(result.abstentions) == 8


def test_a_source_whose_rows_are_no_gate_multiple_is_not_a_stack():
    spec = TargetSpec.from_module(PerLayer(nn.LSTM, layers=1))
    metas = {"rnn.weight_ih_l0": TensorMeta((10, IN), F32), "rnn.weight_hh_l0": TensorMeta((10, 4), F32)}
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches and not result.abstentions


class TwoStacks(nn.Module):
    def __init__(self, make, names=("encoder", "decoder")) -> None:
        super().__init__()
        for n in names:
            setattr(self, n, make())


def test_two_stacks_of_one_signature_pair_by_their_parent_modules():
    src = TwoStacks(lambda: Multi(nn.GRU))
    dst = TwoStacks(lambda: PerLayer(nn.GRU))
    report = transfer(src, dst)
    assert report.mapping["decoder.layers.1.weight_ih_l0"] == "decoder.rnn.weight_ih_l1"
    assert report.mapping["encoder.layers.2.bias_hh_l0"] == "encoder.rnn.bias_hh_l2"
    assert len(report.mapping) == 2 * 4 * LAYERS
    x = _seq()
    with torch.no_grad():
        torch.testing.assert_close(dst.decoder(x), src.decoder(x))


def test_two_stacks_that_nothing_tells_apart_are_abstained_naming_both():
    spec = TargetSpec.from_module(TwoStacks(lambda: PerLayer(nn.GRU), ("left", "right")))
    src = TwoStacks(lambda: Multi(nn.GRU), ("a", "b"))
    metas = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in src.state_dict().items()}
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches
    reasons = {a.target: a.reason for a in result.abstentions}
    assert set(reasons) == set(spec.tensors)
    assert "ambiguous: several recurrent stacks fit 'left.layers.*'" in reasons["left.layers.0.weight_ih_l0"]
    assert "'a.rnn'" in reasons["left.layers.0.weight_ih_l0"] and "'b.rnn'" in reasons["left.layers.0.weight_ih_l0"]


def test_same_layout_stacks_are_left_to_the_name_strategies():
    spec = TargetSpec.from_module(Multi(nn.LSTM))
    state = Multi(nn.LSTM).rnn.state_dict()
    metas = {f"encoder.lstm.{k}": TensorMeta(tuple(v.shape), v.dtype) for k, v in state.items()}
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches and not result.abstentions


def test_a_per_layer_list_with_a_gap_is_not_a_stack():
    net = PerLayer(nn.LSTM)
    state = {k.replace("layers.2.", "layers.5."): v for k, v in net.state_dict().items()}
    spec = TargetSpec.from_module(Multi(nn.LSTM))
    metas = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in state.items()}
    result = match_recurrent(MatchContext(metas, spec, list(spec.tensors), list(metas)))
    assert not result.matches
