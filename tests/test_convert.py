"""``convert_checkpoint``, ``write_safetensors``, ``write_torch``: shared tensors and metadata both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from weightsurgery.convert import convert_checkpoint, output_format, write_safetensors, write_torch
from weightsurgery.errors import OutputExistsError, UnsafeCheckpointError


class NeedsCode:
    """Unpickling an instance imports this module: code that ``weights_only=True`` refuses to run."""


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), "pt") as fh:
        return list(fh.keys()), fh.metadata()


def test_write_safetensors_aliases_identical_views_and_clones_overlaps(tmp_path: Path):
    base = torch.arange(12.0).reshape(3, 4)
    aliases, cloned = write_safetensors(
        {"full": base, "same": base.view(3, 4), "row": base[1], "col": base[:, 0], "own": torch.ones(2)},
        tmp_path / "m.safetensors",
        metadata={"note": "kept"},
    )
    assert aliases == {"same": "full"} and cloned == ("row", "col")
    keys, meta = _header(tmp_path / "m.safetensors")
    assert sorted(keys) == ["col", "full", "own", "row"]
    assert meta == {"format": "pt", "same": "full", "note": "kept"}
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as fh:
        assert torch.equal(fh.get_tensor("col"), base[:, 0])  # non-contiguous view written whole


def test_write_safetensors_refuses_meta_tensors(tmp_path: Path):
    with pytest.raises(ValueError, match=r"tensor 'w' is on the meta device and holds no data"):
        write_safetensors({"w": torch.empty(2, device="meta")}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_tied_module_round_trips_through_safetensors(tmp_path: Path):
    lm = nn.Module()
    lm.embed, lm.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    lm.head.weight = lm.embed.weight
    done = convert_checkpoint(lm, tmp_path / "lm.safetensors")
    assert done.num_tensors == 1 and dict(done.aliases) == {"head.weight": "embed.weight"}
    back = convert_checkpoint(tmp_path / "lm.safetensors", tmp_path / "lm.pth")
    state = torch.load(back.output, weights_only=True)
    assert list(state) == ["embed.weight", "head.weight"] and state["head.weight"] is state["embed.weight"]
    assert torch.equal(state["embed.weight"], lm.embed.weight)


def test_metadata_travels_both_ways(tmp_path: Path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "arch": "mlp"}, tmp_path / "a.ckpt")
    convert_checkpoint(tmp_path / "a.ckpt", tmp_path / "a.safetensors")
    assert _header(tmp_path / "a.safetensors")[1] == {"format": "pt", "epoch": "3", "arch": "mlp"}
    convert_checkpoint(tmp_path / "a.safetensors", tmp_path / "b.pth")
    assert torch.load(tmp_path / "b.pth", weights_only=True)["__metadata__"] == {"epoch": "3", "arch": "mlp"}
    convert_checkpoint(tmp_path / "b.pth", tmp_path / "c.safetensors")  # and back again: nothing lost
    assert _header(tmp_path / "c.safetensors")[1] == {"format": "pt", "epoch": "3", "arch": "mlp"}


def test_plain_pickle_without_metadata_stays_a_plain_state_dict(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors", metadata={"format": "pt"})
    convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert list(state) == ["w"]
    nn.Module.load_state_dict(nn.ParameterDict({"w": nn.Parameter(torch.zeros(2))}), state)


def test_refusals(tmp_path: Path):
    (tmp_path / "out.safetensors").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"out.safetensors already exists; pass overwrite=True"):
        convert_checkpoint({"w": torch.ones(1)}, tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match=r"end it with one of .safetensors, .pt, .pth, .bin, .ckpt"):
        output_format(tmp_path / "out.npz")
    torch.save({"w": torch.ones(1), "obj": NeedsCode()}, tmp_path / "code.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"--unsafe-pickle"):
        convert_checkpoint(tmp_path / "code.pth", tmp_path / "code.safetensors")
    assert not (tmp_path / "code.safetensors").exists()


def test_write_torch_keeps_metadata_only_when_given(tmp_path: Path):
    write_torch({"w": torch.ones(1)}, tmp_path / "a.pth")
    write_torch({"w": torch.ones(1)}, tmp_path / "b.pth", metadata={"k": "v"})
    assert list(torch.load(tmp_path / "a.pth", weights_only=True)) == ["w"]
    assert torch.load(tmp_path / "b.pth", weights_only=True)["__metadata__"] == {"k": "v"}


def test_module_extra_state_survives_a_torch_output_and_is_named_when_safetensors_drops_it(tmp_path, caplog):
    class Scaled(nn.Linear):
        def get_extra_state(self):
            return {"scale": 3.0}

        def set_extra_state(self, state):
            self.scale = state["scale"]

    src = Scaled(2, 2)
    convert_checkpoint(src, tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    assert state["_extra_state"] == {"scale": 3.0} and torch.equal(state["weight"], src.weight.detach())
    with caplog.at_level("WARNING", logger="weightsurgery.convert"):
        done = convert_checkpoint(src, tmp_path / "s.safetensors")
    assert done.num_tensors == 2 and "not written: _extra_state" in caplog.text
