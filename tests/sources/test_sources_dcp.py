"""torch.distributed.checkpoint folders as a source: metadata read safely, chunks by DCP's own reader."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import UnsafeCheckpointError
from weightsurgery.sources import resolve


def _save(state: dict, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no_dist's deprecation note
        dcp.save(state, checkpoint_id=folder, no_dist=True)


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt


def test_an_app_state_folder_loads_its_model_and_skips_the_optimizer(tmp_path) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = _trained()
    msd, osd = get_state_dict(model, opt)
    _save({"model": msd, "optim": osd}, tmp_path)
    ckpt = resolve(tmp_path)
    assert ckpt.origin.kind.value == "dcp" and ckpt.origin.details["optimizer_state"] == 18  # step, exp_avg, exp_avg_sq of 6 tensors
    assert sorted(ckpt.keys()) == sorted(f"model.{k}" for k in model.state_dict())
    target = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    report = transfer(tmp_path, target, strict=True)
    assert report.mapping["0.weight"] == "model.0.weight"
    for k, v in model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_a_box_reads_only_the_chunks_it_overlaps(tmp_path) -> None:
    w = torch.arange(24.0).reshape(6, 4)
    _save({"w": w}, tmp_path)
    ckpt = resolve(tmp_path, key=None)
    reader, fqn = ckpt.locate("w")
    assert torch.equal(reader.read_box(fqn, [range(2, 5), range(1, 3)]), w[2:5, 1:3])
    assert reader.bytes_read > 0


def test_metadata_that_would_run_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    _save({"w": torch.ones(2)}, tmp_path)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata names builtins\.print"):
        resolve(tmp_path)
