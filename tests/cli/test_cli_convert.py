"""``weightsurgery convert``: torch pickle <-> safetensors, shared tensors and metadata kept."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weightsurgery.cli.main import main


def test_convert_pickle_to_safetensors_dedupes_tied_tensors(cli, tmp_path: Path):
    shared = torch.randn(4, 3)
    torch.save({"state_dict": {"embed.weight": shared, "head.weight": shared, "bias": torch.zeros(4)}, "epoch": 2},
               tmp_path / "in.ckpt")
    result = cli("convert", "in.ckpt", "out.safetensors", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["aliases"] == {"head.weight": "embed.weight"} and data["num_tensors"] == 2
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as fh:
        assert sorted(fh.keys()) == ["bias", "embed.weight"]
        assert torch.equal(fh.get_tensor("embed.weight"), shared)
        assert fh.metadata() == {"format": "pt", "head.weight": "embed.weight", "epoch": "2"}


def test_convert_safetensors_to_pickle_and_back(tmp_path: Path, capsys):
    w = torch.randn(3, 3)
    save_file({"a": w, "b": torch.ones(2)}, tmp_path / "m.safetensors", metadata={"arch": "mlp", "c": "a"})
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "m.pth")]) == 0
    assert "m.pth (torch, 3 tensors" in capsys.readouterr().out
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    assert state["c"] is state["a"] and torch.equal(state["a"], w)  # the alias "c" -> "a" restored as sharing
    assert state["__metadata__"] == {"arch": "mlp"}
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "again.safetensors")]) == 0
    with safe_open(str(tmp_path / "again.safetensors"), "pt") as fh:
        assert sorted(fh.keys()) == ["a", "b"] and fh.metadata()["c"] == "a"


def test_convert_refuses_existing_output_and_unknown_suffix(tmp_path: Path, capsys):
    torch.save({"w": torch.ones(1)}, tmp_path / "in.pth")
    (tmp_path / "out.safetensors").write_bytes(b"old")
    assert main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "out.safetensors")]) == 1
    assert "already exists; pass --force to replace it" in capsys.readouterr().err
    assert (tmp_path / "out.safetensors").read_bytes() == b"old"
    assert main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "out.safetensors"), "--force"]) == 0
    assert main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "out.npz")]) == 1
    assert "end it with one of .safetensors, .pt, .pth, .bin, .ckpt" in capsys.readouterr().err
