"""``weightsurgery diff``: two checkpoints in different formats, compared key by key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightsurgery.cli.main import main


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.pth", tmp_path / "b.safetensors"
    torch.save({"same": torch.ones(3), "grown": torch.zeros(2, 2), "moved": torch.arange(4.0),
                "cast": torch.ones(2), "gone": torch.ones(1)}, a)
    save_file({"same": torch.ones(3), "grown": torch.zeros(2, 3), "moved": torch.tensor([0.0, 1.0, 2.0, 4.0]),
               "cast": torch.ones(2, dtype=torch.float16), "new": torch.ones(1)}, b)
    return a, b


def test_diff_json_across_formats(cli, pair):
    a, b = pair
    result = cli("diff", str(a), str(b), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["identical"] is False
    assert data["only_a"] == ["gone"] and data["only_b"] == ["new"]
    assert data["shapes"] == {"grown": {"a": [2, 2], "b": [2, 3]}}
    assert data["dtypes"] == {"cast": {"a": "float32", "b": "float16"}}
    assert data["values"]["moved"]["max_abs"] == 1.0 and data["values"]["moved"]["differing"] == 1
    assert data["equal"] == ["same", "cast"]


def test_diff_table(pair, capsys):
    assert main(["diff", *map(str, pair)]) == 0
    out = capsys.readouterr().out
    assert "only in A" in out and "gone" in out and "only in B" in out
    assert "2×2 → 2×3" in out and "float32 → float16" in out
    assert "max |a-b| 1, rel" in out and "1 of 4 differ" in out


def test_identical_checkpoints(tmp_path: Path, capsys):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pth")
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    assert main(["diff", str(tmp_path / "a.pth"), str(tmp_path / "a.safetensors")]) == 0
    assert "identical: 1 tensors" in capsys.readouterr().out
