"""``weightsurgery inspect``: container, grouped keys, sizes and metadata, from headers only."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from weightsurgery.cli.main import main


def test_inspect_json_describes_a_nested_checkpoint(cli, nested_ckpt: Path, source_model):
    result = cli("inspect", str(nested_ckpt), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["source"]["kind"] == "torch-pickle"
    assert info["source"]["container"] == ["state_dict"]
    state = source_model.state_dict()
    assert info["num_tensors"] == len(state)
    assert info["num_params"] == sum(t.numel() for t in state.values())
    assert info["tensors"]["model.body.weight"] == {"shape": [8, 6], "dtype": "float32"}
    assert info["dtypes"] == {"float32": 8, "int64": 1}
    assert info["metadata"]["scalars"] == {"epoch": 7}


def test_inspect_table_groups_keys_and_shows_the_container(nested_ckpt: Path, capsys):
    assert main(["inspect", str(nested_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "state_dict" in out  # the container path, not swallowed as rich markup
    assert "model.norm.{weight,bias,running_mean,running_var}" in out
    assert "8×6" in out and "float32" in out
    assert "9 (float32 ×8, int64 ×1)" in out


def test_inspect_safetensors_metadata(tmp_path: Path, capsys):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2, 3, dtype=torch.float16)}, path, metadata={"arch": "mlp"})
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["safetensors"] == {"arch": "mlp"}
    assert info["nbytes"] == 12


def test_inspect_unknown_key_names_the_choices(nested_ckpt: Path, capsys):
    assert main(["inspect", str(nested_ckpt), "--key", "ema"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: key='ema' names no container")
    assert "(on the command line: --key state_dict, or drop --key)" in err
