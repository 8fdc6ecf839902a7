"""The planner: strategy order, the shape-mismatch policy, exclusion, ties, unused keys, reasons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.errors import PlanError, ShapeMismatchError
from weightsurgery.match.base import StrategyResult
from weightsurgery.match.plan import Action
from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def metas(module: nn.Module, prefix: str = "") -> dict[str, TensorMeta]:
    return {prefix + k: TensorMeta.of(v) for k, v in module.state_dict().items()}


class Tied(nn.Module):
    def __init__(self, vocab: int = 10, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight


def test_every_target_key_gets_exactly_one_entry_in_module_order() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    plan = make_plan(metas(model, "module."), TargetSpec.from_module(model))
    assert list(plan.entries) == list(model.state_dict())
    assert all(e.action is Action.LOAD and e.strategy == "prefix" for e in plan.entries.values())
    assert plan.unused == ()


def test_shape_mismatch_falls_back_to_init_with_both_shapes() -> None:
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1000))
    dst = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 10))
    plan = make_plan(metas(src), TargetSpec.from_module(dst))
    entry = plan.entries["1.weight"]
    assert entry.action is Action.INIT
    assert entry.evidence == "shape mismatch: 1.weight (10, 3) vs source 1.weight (1000, 3)"
    assert entry.source_shape == (1000, 3)
    assert set(plan.unused) == {"1.weight", "1.bias"}


def test_on_mismatch_error_lists_every_key() -> None:
    src = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1000))
    dst = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 10))
    with pytest.raises(ShapeMismatchError) as info:
        make_plan(metas(src), TargetSpec.from_module(dst), PlanOptions(on_mismatch="error"))
    assert len(info.value.problems) == 4
    assert "0.weight (3, 2) vs source 0.weight (4, 2)" in str(info.value)
    assert info.value.incorrect_shapes == (
        ("0.weight", (3, 2), (4, 2)), ("0.bias", (3,), (4,)),
        ("1.weight", (10, 3), (1000, 4)), ("1.bias", (10,), (1000,)),
    )
    assert info.value.incorrect_shapes[2].source_shape == (1000, 4)


def test_bad_options_list_valid_values() -> None:
    spec = TargetSpec.from_module(nn.Linear(1, 1))
    with pytest.raises(PlanError, match="valid values are 'init', 'adapt', 'error'"):
        make_plan({}, spec, PlanOptions(on_mismatch="guess"))  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=r"unknown strategies \['magic'\]; valid strategies are: explicit, rename"):
        make_plan({}, spec, PlanOptions(strategies=["exact", "magic"]))


def test_strategies_can_be_restricted() -> None:
    model = nn.Linear(2, 3)
    plan = make_plan(metas(model, "module."), TargetSpec.from_module(model), PlanOptions(strategies=["exact"]))
    assert plan.by_action(Action.LOAD) == []
    assert plan.entries["weight"].evidence == "no candidate in the source"


def test_exclude_sends_keys_to_init_with_the_rule_as_reason() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    plan = make_plan(metas(model), TargetSpec.from_module(model), PlanOptions(exclude=["1.*"]))
    assert [e.target for e in plan.by_action(Action.INIT)] == ["1.weight", "1.bias"]
    assert plan.entries["1.bias"].evidence == "excluded by rule '1.*'"
    assert set(plan.unused) == {"1.weight", "1.bias"}
    plan = make_plan(metas(model), TargetSpec.from_module(model), PlanOptions(exclude=[r"re:\.bias$"]))
    assert [e.target for e in plan.by_action(Action.INIT)] == ["0.bias", "1.bias"]


def test_tied_alias_is_not_loaded_twice_and_not_missing() -> None:
    model = Tied()
    plan = make_plan(metas(model), TargetSpec.from_module(model))
    assert plan.entries["lm_head.weight"].action is Action.TIED
    assert plan.entries["lm_head.weight"].alias_of == "embed.weight"
    assert plan.entries["embed.weight"].action is Action.LOAD
    # The source's lm_head.weight is the tensor embed.weight loaded from: it was used (torch accepts this
    # transfer under strict=True), once the source says the two names share a tensor.
    tied = {"tied": [["embed.weight", "lm_head.weight"]]}
    assert make_plan(metas(model), TargetSpec.from_module(model), source_metadata=tied).unused == ()
    # Without that knowledge, an untied source's lm_head.weight really is unused: its values go nowhere.
    assert plan.unused == ("lm_head.weight",)


def test_key_map_and_rename_rules() -> None:
    model = nn.Sequential(nn.Linear(2, 3))
    source = {"enc.w": TensorMeta((3, 2), torch.float32), "enc.b": TensorMeta((3,), torch.float32)}
    options = PlanOptions(key_map={"0.weight": "enc.w", "0.bias": "enc.b"})
    plan = make_plan(source, TargetSpec.from_module(model), options)
    assert plan.mapping == {"0.weight": "enc.w", "0.bias": "enc.b"}
    rules = [(r"^enc\.w$", "0.weight"), (r"^enc\.b$", "0.bias")]
    plan = make_plan(source, TargetSpec.from_module(model), PlanOptions(rename=rules))
    assert {e.strategy for e in plan.entries.values()} == {"rename"}


def test_abstention_reason_reaches_the_plan() -> None:
    plan = make_plan(
        {"a.weight": TensorMeta((3, 2), torch.float32), "b.weight": TensorMeta((3, 2), torch.float32)},
        TargetSpec.from_module(nn.Linear(2, 3, bias=False)),
        PlanOptions(strategies=["exact", "prefix"]),
    )
    assert plan.entries["weight"].action is Action.INIT
    assert plan.entries["weight"].evidence.startswith("ambiguous")



def test_a_key_whose_counterpart_is_known_absent_stays_unloaded_through_every_strategy() -> None:
    # A masked-LM checkpoint into the bare encoder: everything loads under "bert.", but the source
    # has no "bert.pooler.*". Its LM transform "cls.predictions.transform.dense" has the same shape:
    # no later strategy may fill the pooler from it.
    class Pooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(8, 8)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(20, 8)
            self.encoder = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)], nn.LayerNorm(8))
            self.pooler = Pooler()

    source = {f"bert.{k}": TensorMeta.of(v) for k, v in Encoder().state_dict().items() if not k.startswith("pooler")}
    source.update({"cls.predictions.transform.dense.weight": TensorMeta((8, 8), torch.float32),
                   "cls.predictions.transform.dense.bias": TensorMeta((8,), torch.float32)})
    plan = make_plan(source, TargetSpec.from_module(Encoder()))
    for key in ("pooler.dense.weight", "pooler.dense.bias"):
        assert plan.entries[key].action is Action.INIT, plan.entries[key]
        assert plan.entries[key].evidence.startswith("counterpart absent")
    assert set(plan.unused) == {"cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias"}


def test_an_explicit_map_naming_one_source_for_two_targets_copies_it_into_both(tmp_path) -> None:
    from safetensors.torch import save_file

    from weightsurgery import transfer

    shared = {"shared.weight": torch.randn(3, 2), "shared.bias": torch.randn(3)}
    key_map = {f"{m}.{leaf}": f"shared.{leaf}" for m in ("a", "b") for leaf in ("weight", "bias")}
    plan = make_plan(metas_of(shared), TargetSpec.from_module(Pair()), PlanOptions(key_map=key_map))
    assert plan.mapping == key_map
    assert plan.unused == ()
    assert plan.entries["a.weight"].evidence == "user key map; shared.weight is also copied to b.weight"

    save_file(shared, tmp_path / "shared.safetensors")
    for source in (shared, tmp_path / "shared.safetensors"):
        for dst in (Pair(), Pair):  # a built model, and a factory built on meta
            report = transfer(source, dst, key_map=key_map)
            model = report.model
            assert report.mapping == key_map and not report.initialized and not report.unused
            for m in (model.a, model.b):
                assert torch.equal(m.weight, shared["shared.weight"]) and torch.equal(m.bias, shared["shared.bias"])
            assert model.a.weight.data_ptr() != model.b.weight.data_ptr()  # two copies, not one tensor twice
            with torch.no_grad():
                model.a.weight.add_(1.0)
            assert torch.equal(model.b.weight, shared["shared.weight"])


def test_an_explicit_map_giving_two_sources_to_one_tied_tensor_is_an_error() -> None:
    src = {"e.weight": TensorMeta((10, 4), torch.float32), "h.weight": TensorMeta((10, 4), torch.float32)}
    options = PlanOptions(key_map={"embed.weight": "e.weight", "lm_head.weight": "h.weight"})
    with pytest.raises(PlanError, match=r"'embed.weight' and 'lm_head.weight' are one tied tensor, mapped to two "
                                        r"sources 'e.weight' and 'h.weight'; map only one of them"):
        make_plan(src, TargetSpec.from_module(Tied()), options)


def test_a_broken_builtin_strategy_raises_instead_of_degrading(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    model = nn.Sequential(nn.Linear(2, 3))
    monkeypatch.setitem(sys.modules, "weightsurgery.match.suffix", None)  # an install missing the module
    with pytest.raises(ImportError, match=r"built-in matching strategy 'suffix' cannot be loaded .*reinstall"):
        make_plan(metas(model), TargetSpec.from_module(model))
    assert make_plan(metas(model), TargetSpec.from_module(model), PlanOptions(strategies=["exact"])).mapping


def test_later_strategies_are_not_called_once_names_explain_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import weightsurgery.match.numbering as numbering
    import weightsurgery.match.planner as planner

    seen: dict[str, list[int]] = {}  # strategy -> the open keys (targets + sources) it was given, per call
    for name, (module, attr) in planner._OPTIONAL.items():  # aliases, wrappers, fused, recurrent, suffix, structure
        real = getattr(importlib.import_module(module), attr)

        def counting(ctx, real=real, name=name):  # type: ignore[no-untyped-def]
            seen.setdefault(name, []).append(len(ctx.open_targets) + len(ctx.open_sources))
            return real(ctx)

        monkeypatch.setattr(importlib.import_module(module), attr, counting)

    def custom(ctx):  # type: ignore[no-untyped-def]
        seen.setdefault("custom", []).append(len(ctx.open_targets) + len(ctx.open_sources))
        return StrategyResult()

    real_veto = planner.veto_unrelated

    def counting_veto(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.setdefault("related", []).append(len(args[0]))
        return real_veto(*args, **kwargs)

    monkeypatch.setattr(planner, "veto_unrelated", counting_veto)
    built: list[int] = []  # the numbering check's index of both sides, built when a claim needs it
    real_numbering = numbering._Numbering

    class CountingNumbering(real_numbering):  # type: ignore[misc,valid-type]
        def __init__(self, ctx):  # type: ignore[no-untyped-def]
            built.append(len(ctx.target.tensors))
            super().__init__(ctx)

    monkeypatch.setattr(numbering, "_Numbering", CountingNumbering)
    options = PlanOptions(extra_strategies=[custom])

    model = nn.ModuleDict({"encoder": nn.Linear(2, 3), "act": nn.ReLU(), "head": nn.Linear(3, 4)})
    for prefix in ("", "module."):  # exact explains every key, then prefix does
        plan = make_plan(metas(model, prefix), TargetSpec.from_module(model), options)
        assert len(plan.mapping) == 4 and plan.unused == ()
    # no later strategy ran, not even a custom one; a plan that fills every key needs no relatedness
    # check, and no tensor sits on a numbered module, so the numbering check built no index
    assert seen == {} and built == []

    numbered = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    plan = make_plan(metas(numbered, "module."), TargetSpec.from_module(numbered), options)
    assert len(plan.mapping) == 4 and seen == {}
    assert built == [4]  # '0.weight' sits on a numbered module: the claims were checked, with one index

    grown = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.Linear(4, 5))
    plan = make_plan(metas(numbered, "module."), TargetSpec.from_module(grown), options)
    assert len(plan.mapping) == 4
    # the later strategies ran, once each, and saw only the new layer's two keys (no source is left);
    # suffix then closes them (their siblings loaded under a rename that the source lacks for them)
    related = seen.pop("related")
    assert set(seen) == {"aliases", "wrappers", "fused", "recurrent", "suffix"} and all(calls == [2] for calls in seen.values())
    assert related == [6]  # the plan has an open key, so relatedness is weighed, once


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(2, 3)


def metas_of(state: dict[str, torch.Tensor]) -> dict[str, TensorMeta]:
    return {k: TensorMeta.of(v) for k, v in state.items()}
