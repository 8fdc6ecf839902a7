"""compute_init: seeded, out-of-place fallback init of the leftover keys; what no rule names is kept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightsurgery.errors import InitSpecMismatchError, PlanError, TargetError
from weightsurgery.init import InitRules, compute_init
from weightsurgery.init.engine import KEPT_CONSTRUCTOR_VALUES
from weightsurgery.init.seeding import derive_seed
from weightsurgery.match.target import TargetSpec

DEFAULT = InitRules.from_user(None)
RESET = InitRules.from_user("reset")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)


def _init(model: nn.Module, keys: list[str], rules: InitRules = DEFAULT, seed: int | None = 0, **kwargs):
    return compute_init(model, TargetSpec.from_module(model), keys, rules, seed=seed, **kwargs)


def test_the_module_is_never_changed() -> None:
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _init(model, list(before), InitRules.from_user({"*.bias": "ones", "re:.": "reset"}))
    assert set(result.tensors) == set(before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(torch.equal(result.tensors[k], before[k]) for k in ("conv.weight", "fc.weight"))


def test_reset_runs_the_owning_modules_own_reset_on_fresh_tensors() -> None:
    model = Net()
    result = _init(model, ["fc.weight", "fc.bias"], RESET, seed=5)
    reference = nn.Linear(4, 5)
    torch.manual_seed(derive_seed(5, "module:fc"))
    reference.reset_parameters()
    assert torch.equal(result.tensors["fc.weight"], reference.weight.detach())
    assert torch.equal(result.tensors["fc.bias"], reference.bias.detach())
    assert result.specs == {"fc.weight": "reset", "fc.bias": "reset"}
    assert result.rules == {"fc.weight": "*", "fc.bias": "*"}
    assert result.kept == ()


def test_without_a_rule_leftovers_keep_their_values_and_nothing_is_computed() -> None:
    model = Net()
    state = torch.random.get_rng_state()
    result = _init(model, ["fc.weight", "bn.running_var"], seed=None)
    assert result.tensors == {} and result.kept == ("fc.weight", "bn.running_var")
    assert result.specs == {"fc.weight": "constructor", "bn.running_var": "constructor"}
    assert result.rules == {"fc.weight": "default", "bn.running_var": "default"}
    assert torch.equal(torch.random.get_rng_state(), state), "keeping must not draw from the global RNG"
    copied = _init(model, ["fc.weight"], materialize=["fc.weight"])
    assert torch.equal(copied.tensors["fc.weight"], model.fc.weight)
    assert copied.tensors["fc.weight"].data_ptr() != model.fc.weight.data_ptr()


def test_keep_exempts_keys_from_a_broader_rule() -> None:
    result = _init(Net(), ["fc.weight", "fc.bias"], InitRules.from_user({"fc.bias": "keep", "*": "zeros"}))
    assert result.kept == ("fc.bias",) and result.rules["fc.bias"] == "fc.bias"
    assert list(result.tensors) == ["fc.weight"] and result.tensors["fc.weight"].abs().sum() == 0


def test_only_the_requested_tensor_of_a_module_is_returned() -> None:
    model = Net()
    result = _init(model, ["fc.bias"], RESET)
    assert list(result.tensors) == ["fc.bias"]
    bound = 1 / math.sqrt(4)
    assert float(result.tensors["fc.bias"].abs().max()) <= bound


def test_unloaded_buffers_keep_their_values_unless_a_rule_names_them() -> None:
    model = Net()
    model.bn.running_mean.fill_(3.0)
    model.bn.running_var.fill_(9.0)
    model.bn.num_batches_tracked.fill_(11)
    keys = ["bn.weight", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    kept = _init(model, keys, InitRules.from_user("trunc_normal(std=0.02)"))
    assert list(kept.tensors) == ["bn.weight"] and kept.kept == tuple(keys[1:])
    result = _init(model, keys, InitRules.from_user({"bn.running_*": "reset", "bn.num_*": "reset",
                                                     "*": "trunc_normal(std=0.02)"}))
    assert result.tensors["bn.running_mean"].tolist() == [0.0] * 4
    assert result.tensors["bn.running_var"].tolist() == [1.0] * 4
    assert result.tensors["bn.num_batches_tracked"].item() == 0
    assert result.tensors["bn.num_batches_tracked"].dtype == torch.int64
    assert result.rules["bn.running_var"] == "bn.running_*" and result.rules["bn.weight"] == "*"
    assert float(model.bn.running_var[0]) == 9.0


def test_seeded_results_are_reproducible_and_ignore_global_rng() -> None:
    keys = ["conv.weight", "conv.bias", "fc.weight"]
    rules = InitRules.from_user({"conv.*": "normal(std=0.1)", "*": "reset"})
    torch.manual_seed(1)
    a = _init(Net(), keys, rules, seed=42)
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = _init(Net(), keys, rules, seed=42)
    for key in keys:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    torch.manual_seed(1)
    Net()
    assert torch.equal(torch.random.get_rng_state(), state), "a seeded init must not advance the global RNG"
    c = _init(Net(), keys, rules, seed=43)
    assert not torch.equal(a.tensors["conv.weight"], c.tensors["conv.weight"])


@pytest.mark.parametrize("rules", [RESET, InitRules.from_user("normal(std=0.1)")])
def test_a_key_does_not_depend_on_which_other_keys_are_initialized(rules: InitRules) -> None:
    model = Net()
    both = _init(model, ["fc.weight", "fc.bias", "conv.weight"], rules, seed=7)
    alone = _init(model, ["fc.bias"], rules, seed=7)
    assert torch.equal(both.tensors["fc.bias"], alone.tensors["fc.bias"])


def test_without_a_seed_torch_manual_seed_makes_it_reproducible() -> None:
    torch.manual_seed(0)
    a = _init(Net(), ["fc.weight"], RESET, seed=None)
    torch.manual_seed(0)
    b = _init(Net(), ["fc.weight"], RESET, seed=None)
    torch.manual_seed(1)
    c = _init(Net(), ["fc.weight"], RESET, seed=None)
    assert torch.equal(a.tensors["fc.weight"], b.tensors["fc.weight"])
    assert not torch.equal(a.tensors["fc.weight"], c.tensors["fc.weight"])


def test_meta_targets_without_a_constructor_get_reset_as_cpu_tensors_of_the_target_dtype() -> None:
    with torch.device("meta"):
        model = Net().to(torch.bfloat16)
    keys = list(TargetSpec.from_module(model).tensors)
    result = _init(model, keys)
    assert result.kept == () and set(result.specs.values()) == {"reset"}
    for key in keys:
        tensor = result.tensors[key]
        assert tensor.device.type == "cpu" and not tensor.is_meta
        assert tensor.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.bfloat16)
    materialized = _init(Net().to(torch.bfloat16), keys, RESET)
    assert torch.equal(result.tensors["fc.weight"], materialized.tensors["fc.weight"])


class CountingLinear(nn.Linear):
    resets = 0

    def reset_parameters(self) -> None:
        type(self).resets += 1
        super().reset_parameters()


def test_a_module_resets_once_and_untouched_modules_not_at_all() -> None:
    model = nn.Sequential(CountingLinear(3, 3), CountingLinear(3, 3))
    CountingLinear.resets = 0
    _init(model, ["1.weight", "1.bias"], RESET)
    assert CountingLinear.resets == 1
    _init(model, ["1.weight", "1.bias"])
    assert CountingLinear.resets == 1, "a kept leftover is never reset"


class Parent(nn.Module):
    """A module whose reset reaches into its child."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(3))
        self.child = nn.Linear(3, 3)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)
        nn.init.constant_(self.child.weight, 99.0)


def test_a_reset_that_needs_its_children_cannot_touch_the_real_ones() -> None:
    model = Parent()
    child_before = model.child.weight.clone()
    result = _init(model, ["scale"], RESET)
    assert result.tensors["scale"].tolist() == [1.0, 1.0, 1.0]
    assert result.specs["scale"] == "reset"
    assert torch.equal(model.child.weight, child_before)
    assert model.scale.tolist() == [0.0, 0.0, 0.0]


def test_multihead_attention_uses_its_private_reset() -> None:
    model = nn.MultiheadAttention(8, 2)
    result = _init(model, ["in_proj_weight", "in_proj_bias"], RESET)
    assert result.specs == {"in_proj_weight": "reset", "in_proj_bias": "reset"}
    assert result.tensors["in_proj_bias"].abs().sum() == 0
    bound = math.sqrt(6 / (8 + 24))  # xavier_uniform on (24, 8)
    assert float(result.tensors["in_proj_weight"].abs().max()) <= bound


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.full((2, 3), 0.5))
        self.offset = nn.Parameter(torch.full((3,), 0.25))


class PartialReset(NoReset):
    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.table[0].fill_(1.0)  # leaves row 1 and ``offset`` unset
        self.offset.data = self.offset.data


def test_a_module_asked_to_reset_that_cannot_keeps_its_constructor_values() -> None:
    for cls in (NoReset, PartialReset):
        model = cls()
        result = _init(model, ["table", "offset"], RESET)
        assert result.specs == {"table": KEPT_CONSTRUCTOR_VALUES, "offset": KEPT_CONSTRUCTOR_VALUES}
        assert result.kept == ("table", "offset") and result.tensors == {}
        copied = _init(model, ["table", "offset"], RESET, materialize=["table"])
        assert list(copied.tensors) == ["table"] and torch.equal(copied.tensors["table"], model.table.detach())
        assert copied.tensors["table"].data_ptr() != model.table.data_ptr()


def test_on_meta_a_module_that_cannot_reset_gets_the_documented_fallback() -> None:
    with torch.device("meta"):
        model = NoReset()
    result = _init(model, ["table", "offset"], seed=3)
    assert result.specs == {"table": "trunc_normal(std=0.02)", "offset": "zeros"}
    assert result.rules == {"table": "default", "offset": "default"}
    assert float(result.tensors["table"].abs().max()) <= 2.0 and result.tensors["table"].std() > 0
    assert result.tensors["offset"].tolist() == [0.0, 0.0, 0.0]


def test_callables_and_specs_are_recorded_by_description() -> None:
    def fill_half(tensor: torch.Tensor) -> None:
        tensor.fill_(0.5)

    rules = InitRules.from_user({"fc.weight": fill_half, "*": "constant(2)"})
    result = _init(Net(), ["fc.weight", "fc.bias"], rules)
    assert result.specs["fc.weight"].endswith("fill_half")
    assert result.tensors["fc.weight"].unique().tolist() == [0.5]
    assert result.specs["fc.bias"] == "constant(2.0)"
    assert result.rules == {"fc.weight": "fc.weight", "fc.bias": "*"}


def test_results_follow_the_order_of_keys_and_resolve_aliases() -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight
    target = TargetSpec.from_module(model)
    assert target.aliases == {"1.weight": "0.weight"}
    result = compute_init(model, target, ["1.weight"], RESET, seed=0)
    assert list(result.tensors) == ["0.weight"]
    model2 = Net()
    order = ["fc.bias", "conv.weight", "fc.weight"]
    assert list(_init(model2, order, InitRules.from_user({"conv.*": "zeros", "*": "reset"})).tensors) == order


def test_unknown_keys_and_misfitting_specs_raise_before_any_work() -> None:
    model = Net()
    with pytest.raises(PlanError, match=r"cannot initialize 'fc.gamma': not a key of the target"):
        _init(model, ["fc.gamma"])
    with pytest.raises(InitSpecMismatchError, match=r"'fc.bias' has shape \(5,\), but orthogonal needs"):
        _init(model, ["fc.weight", "fc.bias"], InitRules.from_user("orthogonal"))


def test_a_bad_seed_is_refused() -> None:
    with pytest.raises(ValueError, match=r"seed='0' must be an int or None"):
        _init(Net(), ["fc.bias"], seed="0")  # type: ignore[arg-type]


def test_kept_parameters_on_meta_get_the_constructors_values_from_the_replay() -> None:
    with torch.device("meta"):
        model = Net()
    calls = []

    def constructor(keys, *, seed):
        calls.append((list(keys), seed))
        return {k: torch.full(TargetSpec.from_module(model).tensors[k].shape, 0.5) for k in keys}

    result = _init(model, ["fc.weight", "fc.bias", "conv.weight"], InitRules.from_user({"conv.*": "zeros"}),
                   seed=3, constructor=constructor)
    assert calls == [(["fc.weight", "fc.bias"], derive_seed(3, "constructor"))], "one replay for every kept key"
    assert result.kept == ("fc.weight", "fc.bias")
    assert result.specs == {"fc.weight": "constructor", "fc.bias": "constructor", "conv.weight": "zeros"}
    assert result.tensors["fc.weight"].unique().tolist() == [0.5] and result.tensors["fc.bias"].device.type == "cpu"


def test_a_failed_replay_falls_back_to_the_modules_reset(caplog) -> None:
    with torch.device("meta"):
        model = Net()

    def constructor(keys, *, seed):
        raise TargetError("the model cannot be built again")

    with caplog.at_level("WARNING", logger="weightsurgery.init.engine"):
        result = _init(model, ["fc.weight"], seed=3, constructor=constructor)
    assert result.kept == () and result.specs == {"fc.weight": "reset"}
    assert torch.equal(result.tensors["fc.weight"], _init(Net(), ["fc.weight"], RESET, seed=3).tensors["fc.weight"])
    assert "cannot get the constructor's values of 1 leftover tensor(s)" in caplog.text
