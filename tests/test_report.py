"""The report's rendering: summary figures, the grouped table, JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from weightsurgery import transfer


def test_coverage_is_rounded_down_so_partial_never_reads_as_complete() -> None:
    src = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100))
    target = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100))
    report = transfer({k: v for k, v in src.state_dict().items() if k != "1.bias"}, target, seed=0)
    assert 0.995 < report.coverage < 1.0
    assert "coverage 99.5% of 20.20k parameters" in report.summary()


def test_table_groups_keys_and_names_strategy_reason_and_spec() -> None:
    src = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)], nn.Linear(4, 10))
    target = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)], nn.Linear(4, 3))
    ckpt = {f"module.{k}": v for k, v in src.state_dict().items()}
    text = str(transfer(ckpt, target, init={"6.*": "zeros"}, seed=0))
    lines = text.splitlines()
    assert "loaded (12)" in lines
    assert "  prefix  {0..5}.{weight,bias}  (stripped 'module.')" in lines
    assert "initialized (2)" in lines
    assert "  zeros  6.{weight,bias}  (shape mismatch; rule 6.*)" in lines
    assert "unused source keys (2)" in lines and "  module.6.{weight,bias}" in lines


def test_to_dict_is_json_and_records_every_key() -> None:
    src = nn.Linear(3, 2).half()
    report = transfer(src, nn.Linear(3, 2))
    data = json.loads(report.to_json())
    assert {r["target"] for r in data["records"]} == {"weight", "bias"}
    record = next(r for r in data["records"] if r["target"] == "weight")
    assert record == {
        "target": "weight", "status": "loaded", "source": "weight", "strategy": "exact",
        "target_shape": [2, 3], "target_dtype": "float32", "source_shape": [2, 3], "source_dtype": "float16",
        "cast": "float16→float32",
    }
    assert data["coverage"] == 1.0 and data["source"]["kind"] == "module"
    assert torch.equal(report.model.weight, src.weight.float())


def test_report_is_immutable_and_survives_pickling() -> None:
    import dataclasses
    import pickle

    report = transfer(nn.Linear(3, 2), nn.Linear(3, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.unused = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del report.plan
    with pytest.raises(TypeError):
        report.records["weight"] = report.records["bias"]  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(report))
    assert copy.to_dict() == report.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.applied = False  # type: ignore[misc]


@pytest.mark.filterwarnings("ignore:.*look unrelated")
def test_incorrect_shapes_lists_what_a_shape_mismatch_left_to_init_as_fvcore_does() -> None:
    src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 1000))
    dst = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8, 10))
    report = transfer(src, dst, seed=0)
    assert report.incorrect_shapes == [
        ("0.weight", (8, 1, 3, 3), (8, 3, 3, 3)), ("2.weight", (10, 8), (1000, 8)), ("2.bias", (10,), (1000,)),
    ]
    assert report.incorrect_shapes[0].target_shape == (8, 1, 3, 3)
    adapted = transfer(src, dst, seed=0, on_mismatch="adapt", dry_run=True)
    assert adapted.adapted == ["0.weight"]  # input channels adapted: no longer an incorrect shape
    assert [k for k, _, _ in adapted.incorrect_shapes] == ["2.weight", "2.bias"]
    assert json.loads(report.to_json())["incorrect_shapes"] == [
        ["0.weight", [8, 1, 3, 3], [8, 3, 3, 3]], ["2.weight", [10, 8], [1000, 8]], ["2.bias", [10], [1000]],
    ]
