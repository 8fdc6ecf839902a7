"""transfer() end to end on local sources: the core promises of the toolkit."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
from torch import nn

from weightsurgery import Checkpoint, transfer
from weightsurgery.errors import CoverageError, PlanError, StrictTransferError
from weightsurgery.sources.checkpoint import Origin, SourceKind, TensorMeta


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight


def test_issue_example_lightning_checkpoint_into_timm_resnet18(tmp_path) -> None:
    pretrained = timm.create_model("resnet18")
    ckpt = {"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()}, "epoch": 9}
    path = tmp_path / "epoch=9.ckpt"
    torch.save(ckpt, path)
    model = timm.create_model("resnet18", num_classes=10)
    head = {k: v.clone() for k, v in model.fc.state_dict().items()}
    report = transfer(path, model, seed=0)
    assert sorted(report.kept) == ["fc.bias", "fc.weight"] == sorted(report.missing_keys)
    assert report.initialized == []
    assert all(torch.equal(getattr(model.fc, k), v) for k, v in head.items()), "the constructor's head is kept"
    assert len(report.mapping) == len(model.state_dict()) - 2
    assert set(report.unused) == {"model.fc.weight", "model.fc.bias"}
    assert report.origin.container == ("state_dict",)
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, pretrained.state_dict()[k]), k
    text = str(report)
    assert "kept (2)" in text and "constructor  fc.{weight,bias}  (shape mismatch)" in text
    assert "stripped 'model.'" in text


def test_fault_mid_apply_leaves_target_bit_for_bit_unchanged() -> None:
    source = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    state = source.state_dict()
    reads = []

    def flaky_loader(key: str) -> torch.Tensor:
        reads.append(key)
        if len(reads) == 4:
            raise OSError(f"simulated read error on {key}")
        return state[key]

    ckpt = Checkpoint({k: TensorMeta.of(v) for k, v in state.items()}, flaky_loader,
                      Origin(SourceKind.STATE_DICT, "flaky"))
    target = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    before = snapshot(target)
    with pytest.raises(OSError, match="simulated read error"):
        transfer(ckpt, target, seed=0)
    assert len(reads) == 4  # it failed mid-apply, after reading some tensors
    assert_unchanged(target, before)


def test_failing_init_leaves_target_unchanged() -> None:
    def broken(tensor: torch.Tensor) -> None:
        raise RuntimeError("init exploded")

    source = nn.Linear(4, 8)
    target = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    before = snapshot(target)
    with pytest.raises(RuntimeError, match="init exploded"):
        transfer({"0.weight": source.weight.detach(), "0.bias": source.bias.detach()}, target, init=broken)
    assert_unchanged(target, before)


def test_a_loaded_weight_keeps_its_value_when_its_bias_is_initialized() -> None:
    src = nn.Linear(3, 5)
    target = nn.Linear(3, 5)
    bias = target.bias.detach().clone()
    report = transfer({"weight": src.weight.detach()}, target, init="reset", seed=1)
    assert torch.equal(target.weight, src.weight)
    assert report.initialized == ["bias"] and report.kept == []
    assert report.records["bias"].init_spec == "reset" and report.records["bias"].init_rule == "*"
    assert not torch.equal(target.bias, bias)
    assert float(target.bias.detach().abs().max()) <= 1 / 3**0.5


@pytest.mark.filterwarnings("ignore:only .* of the target's parameters")
def test_unloaded_buffers_keep_their_values_unless_a_rule_names_them() -> None:
    target = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        target[1].running_mean.fill_(7.0)
        target[1].running_var.fill_(9.0)
    src = nn.Linear(2, 3)
    sd = {"0.weight": src.weight.detach(), "0.bias": src.bias.detach()}
    report = transfer(sd, target, init="reset", seed=0)
    assert torch.equal(target[1].running_mean, torch.full((3,), 7.0)), "a '*' rule passes buffers by"
    assert report.records["1.running_mean"].status == "kept"
    assert report.records["1.weight"].status == "initialized"
    report = transfer(sd, target, init={"1.running_*": "reset"}, seed=0)
    assert torch.equal(target[1].running_mean, torch.zeros(3))
    assert torch.equal(target[1].running_var, torch.ones(3))
    assert report.records["1.running_var"].init_rule == "1.running_*"


def test_dry_run_touches_nothing_and_still_reports_init_specs() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 7))
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    before = snapshot(target)
    report = transfer(src, target, dry_run=True, init="zeros")
    assert_unchanged(target, before)
    assert not report.applied
    assert report.records["1.weight"].init_spec == "zeros"
    assert "(dry run)" in report.summary()


def test_strict_raises_with_grouped_keys_and_changes_nothing() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 7))
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    before = snapshot(target)
    with pytest.raises(StrictTransferError, match=r"1\.\{weight,bias\}") as info:
        transfer(src, target, strict=True)
    assert set(info.value.missing) == {"1.weight", "1.bias"}
    assert set(info.value.unused) == {"1.weight", "1.bias"}
    assert_unchanged(target, before)
    transfer(src[0], nn.Linear(2, 3), strict=True)  # an exact fit passes


def test_freeze_stops_gradients_on_loaded_parameters_only() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 7))
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    report = transfer(src, target, freeze=True, seed=0)
    assert not target[0].weight.requires_grad and not target[0].bias.requires_grad
    assert target[1].weight.requires_grad and target[1].bias.requires_grad
    assert set(report.frozen) == {"0.weight", "0.bias"}


def test_min_coverage_and_the_low_coverage_warning() -> None:
    src = nn.Sequential(nn.Linear(2, 3))
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 400), nn.Linear(400, 2))
    before = snapshot(target)
    with pytest.raises(CoverageError, match=r"only 0\.4% of the target's parameters would load") as info:
        transfer(src, target, min_coverage=0.5)
    assert info.value.required == 0.5 and info.value.coverage < 0.01
    assert_unchanged(target, before)
    with pytest.warns(UserWarning, match=r"only 0\.4% of the target's parameters \(2 of 6 tensors\) load from .*the rest does not load"):
        report = transfer(src, target, seed=0)
    assert report.warnings and report.coverage < 0.01
    with pytest.raises(ValueError, match="min_coverage=2 must lie between 0 and 1"):
        transfer(src, target, min_coverage=2)


def test_seed_makes_init_reproducible_and_independent_of_global_rng_and_of_other_keys() -> None:
    def run(seed_global: int, with_first_layer: bool) -> nn.Module:
        torch.manual_seed(seed_global)
        target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
        src = {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(3)} if with_first_layer else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transfer(src, target, seed=123, init="normal(std=0.1)")
        return target

    a, b, c = run(0, True), run(99, True), run(5, False)
    assert torch.equal(a[1].weight, b[1].weight)
    assert torch.equal(a[1].weight, c[1].weight)  # same key, same value, whatever else loaded
    assert torch.equal(a[1].weight, transfer_seed(123)[1].weight)
    assert not torch.equal(a[1].weight, transfer_seed(7)[1].weight)  # the seed matters


def transfer_seed(seed: int) -> nn.Module:
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transfer({}, target, seed=seed, init="normal(std=0.1)")
    return target


def test_init_rules_by_pattern_and_module_type() -> None:
    target = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer({}, target, seed=0, init={"*.bias": "zeros", nn.Conv2d: "constant(0.5)", "2.*": "ones"})
    assert torch.equal(target[0].weight, torch.full_like(target[0].weight, 0.5))
    assert torch.equal(target[0].bias, torch.zeros(4))
    assert torch.equal(target[2].weight, torch.ones(3, 4))
    assert report.records["0.weight"].init_spec == "constant(0.5)"
    assert report.records["2.bias"].init_spec == "zeros"


def test_dtype_cast_is_made_and_reported() -> None:
    src = nn.Linear(3, 2).half()
    target = nn.Linear(3, 2)
    report = transfer(src, target)
    assert target.weight.dtype == torch.float32
    assert torch.equal(target.weight, src.weight.float())
    assert report.records["weight"].cast == "float16→float32"
    assert report.to_dict()["records"][0]["cast"] == "float16→float32"


def test_tied_weights_load_once_stay_tied_and_are_not_missing() -> None:
    src = Tied()
    target = Tied()
    report = transfer(src.state_dict(), target)
    assert target.lm_head.weight is target.embed.weight
    assert torch.equal(target.embed.weight, src.embed.weight)
    assert report.records["lm_head.weight"].status == "tied"
    assert report.missing_keys == []
    assert "lm_head.weight" not in report.mapping


def test_meta_target_is_materialized_without_aliasing_the_source() -> None:
    src = Tied()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    with torch.device("meta"):
        target = Tied()
    report = transfer(state, target)
    assert not any(p.is_meta for p in target.parameters())
    assert target.lm_head.weight is target.embed.weight
    for k, v in target.state_dict().items():
        assert torch.equal(v, state[k])
        assert v.untyped_storage().data_ptr() != state[k].untyped_storage().data_ptr(), k
    assert report.coverage == 1.0


def test_meta_target_leftovers_are_initialized_on_cpu() -> None:
    with torch.device("meta"):
        target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    transfer({"0.weight": torch.ones(3, 2), "0.bias": torch.ones(3)}, target, seed=0)
    assert target[1].weight.device.type == "cpu"
    assert torch.isfinite(target[1].weight).all()


def test_saved_plan_reapplies_without_matching(tmp_path) -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    ckpt = {f"net.{k}": v for k, v in src.state_dict().items()}
    first = transfer(ckpt, nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4)))
    first.plan.save(tmp_path / "plan.json")
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    again = transfer(ckpt, target, plan=tmp_path / "plan.json")
    assert again.mapping == first.mapping
    assert torch.equal(target[1].weight, src[1].weight)


def test_a_plan_that_does_not_fit_lists_every_problem_and_changes_nothing() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    plan = transfer(src, nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4)), dry_run=True).plan
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 5))
    before = snapshot(other)
    with pytest.raises(PlanError, match=r"2 problem\(s\)") as info:
        transfer(src, other, plan=plan)
    assert any("1.weight: target shape (5, 3) but source 1.weight has (4, 3)" in p for p in info.value.problems)
    assert_unchanged(other, before)


def test_report_agrees_with_torch_meaning_and_json() -> None:
    import json

    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 7))
    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    report = transfer(src, target, seed=0)
    missing, unexpected = report
    assert missing == ["1.weight", "1.bias"] == report.missing_keys
    assert unexpected == ["1.weight", "1.bias"] == report.unexpected_keys
    data = json.loads(report.to_json())
    assert data["mapping"] == {"0.weight": "0.weight", "0.bias": "0.bias"}
    assert data["initialized"] == [] and data["kept"] == ["1.weight", "1.bias"]
    assert data["missing_keys"] == ["1.weight", "1.bias"]
    assert data["records"][2] == {
        "target": "1.weight", "status": "kept", "strategy": "exact", "init_spec": "constructor", "init_rule": "default",
        "evidence": "shape mismatch: 1.weight (4, 3) vs source 1.weight (7, 3)", "target_shape": [4, 3],
        "target_dtype": "float32", "source_shape": [7, 3],
    }
    data = json.loads(transfer(src, target, init="zeros", seed=0).to_json())
    assert data["initialized"] == ["1.weight", "1.bias"] and data["kept"] == []
    assert data["unused"] == ["1.weight", "1.bias"]
    assert data["source"]["kind"] == "module"


def test_transfer_does_not_modify_the_source() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    before = snapshot(src)
    target = copy.deepcopy(src)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    transfer(src, target)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1)
    assert_unchanged(src, before)


def test_transfer_closes_the_files_it_opened_but_not_a_callers_checkpoint(tmp_path) -> None:
    import os

    from safetensors.torch import save_file

    from weightsurgery import resolve

    path = tmp_path / "w.safetensors"
    save_file(nn.Linear(2, 3).state_dict(), path)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    for _ in range(5):
        transfer(path, nn.Linear(2, 3))
    assert fds() == before
    ckpt = resolve(path)
    transfer(ckpt, nn.Linear(2, 3))
    assert ckpt.load("weight").shape == (3, 2)  # still open: the caller owns it
    ckpt.close()


def test_low_coverage_warns_when_either_fraction_is_low_and_points_at_the_callers_line() -> None:
    # most tensors load (4 of 6) but only about a quarter of the parameters: a big new head
    src = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16))
    target = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 80))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = transfer(src, target, seed=0)
    assert 0.2 < report.coverage < 0.25 and len(report.mapping) == 4  # 23 % of the parameters, 67 % of the tensors
    [w] = caught
    assert "load from" in str(w.message) and "(4 of 6 tensors)" in str(w.message)
    assert w.filename == __file__


@pytest.mark.parametrize(
    ("source", "says"),
    [({}, "holds no tensors"), ({"other.weight": torch.ones(5, 5)}, "has no tensor that matches the target")],
)
def test_a_source_that_fills_nothing_warns_at_the_callers_line(source, says) -> None:
    target = nn.Sequential(nn.Linear(2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = transfer(source, target, seed=0)
    assert report.kept == ["0.weight", "0.bias"] and report.initialized == []
    [w] = caught
    assert f"nothing loaded: state-dict <mapping> {says}; none of its 2 target tensors loads" == str(w.message)
    assert w.filename == __file__ and report.warnings == (str(w.message),)
