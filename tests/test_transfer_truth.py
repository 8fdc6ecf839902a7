"""The report is always true: a hypothesis property over random small models (issue 10, acceptance).

Every source tensor gets distinct random values, so a target tensor's value
names the source tensor it came from. After each transfer every target tensor
is fingerprinted against every source tensor, and ``mapping``, ``initialized``,
``unused``, ``missing_keys`` and ``unexpected_keys`` must agree with what the
model actually holds:

- a key in ``mapping`` holds exactly the values of its source key;
- a key that is not filled (initialized, kept) holds the values of no source tensor;
- a tied alias holds what its canonical key holds, and is missing exactly when it is;
- ``missing_keys`` are the target keys whose values came from no source tensor;
- ``unused`` (and ``unexpected_keys``) are the source keys whose values are nowhere in the model.

The models mix plain layers, norms with integer buffers, tied embedding/head
pairs (tied or untied in the source), two parameters over one view, and a
parameter with a buffer that is a view of its first row. Sources are state
dicts (keys dropped, reshaped, prefixed, cast)
or safetensors files that store a tied tensor once with alias metadata. A run
is applied directly, or dry-run first (the model must not change) and then
re-applied from its plan; a plan saved as JSON is re-applied on a source that
has grown extra keys, which must show up as unused. A ``key_map`` may copy one
source into two targets, and a string ``exclude`` names whole blocks.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from weightsurgery import Plan, transfer
from weightsurgery.convert import write_safetensors
from weightsurgery.errors import SharedMemoryConflictError
from weightsurgery.report import Report

# --- models --------------------------------------------------------------------------------------------


class TiedPair(nn.Module):
    """An embedding and an output head that shares its weight."""

    def __init__(self, vocab: int, dim: int, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight


class Views(nn.Module):
    """A parameter and a buffer that is a view of its first row."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.randn(2, n))
        self.register_buffer("row", self.base.data[0])


class SameView(nn.Module):
    """Two parameters over the same view of one tensor (not tied by identity)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        base = torch.randn(2, n)
        self.a, self.b = nn.Parameter(base), nn.Parameter(base)


Spec = tuple[Any, ...]


@st.composite
def specs(draw: st.DrawFn, depth: int = 0) -> list[Spec]:
    kinds = ["linear", "bn", "ln", "tied", "views", "sameview"] + (["nested"] if depth < 1 else [])
    out: list[Spec] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "linear":
            out.append(("linear", draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.booleans())))
        elif kind in ("bn", "ln", "views", "sameview"):
            out.append((kind, draw(st.integers(1, 4))))
        elif kind == "tied":
            out.append(("tied", draw(st.integers(2, 5)), draw(st.integers(1, 3))))
        else:
            out.append(("nested", draw(specs(depth + 1))))
    return out


def build(spec: list[Spec], *, tied: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for kind, *args in spec:
        if kind == "linear":
            layers.append(nn.Linear(args[0], args[1], bias=args[2]))
        elif kind == "bn":
            layers.append(nn.BatchNorm1d(args[0]))
        elif kind == "ln":
            layers.append(nn.LayerNorm(args[0]))
        elif kind == "tied":
            layers.append(TiedPair(args[0], args[1], tied=tied))
        elif kind == "views":
            layers.append(Views(args[0]))
        elif kind == "sameview":
            layers.append(SameView(args[0]))
        else:
            layers.append(build(args[0], tied=tied))
    return nn.Sequential(*layers)


def distinct_values(model: nn.Module, counter: list[int]) -> None:
    """Give every tensor of ``model`` values no other tensor has (shared tensors and views stay shared)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape) + counter[0])
            else:
                t.fill_(1000 + counter[0])
            counter[0] += 1


# --- the truth -------------------------------------------------------------------------------------------


def fingerprints(state: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """Target key -> the source keys whose values it holds exactly."""
    return {
        t: {s for s, v in source.items() if v.shape == tv.shape and torch.equal(tv, v.to(tv.dtype))}
        for t, tv in state.items()
    }


def assert_report_is_true(
    report: Report, model: nn.Module, source: Mapping[str, torch.Tensor],
    before: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """``before``: the built target's values before the transfer; a ``kept`` key must still hold them."""
    state = model.state_dict()
    found = fingerprints(state, source)
    assert set(report.records) == set(state)
    filled = set(report.mapping)
    for t, s in report.mapping.items():
        assert s in found[t], f"{t} is reported loaded from {s}, but holds {sorted(found[t]) or 'no source values'}"
    for t, r in report.records.items():
        if r.status == "tied":
            assert r.alias_of in state and torch.equal(state[t], state[r.alias_of]), t
        elif t not in filled:
            assert not found[t], f"{t} is reported {r.status}, but holds the values of {sorted(found[t])}"
            if r.status == "kept" and before is not None:
                assert torch.equal(state[t], before[t]), f"{t} is reported kept, but its values changed"
    assert set(report.missing_keys) == {t for t in state if not found[t]}, "missing_keys"
    used = set().union(*found.values())
    assert set(report.unused) == set(source) - used, "unused"
    assert set(report.unexpected_keys) == set(report.unused)
    assert set(report.initialized) <= {t for t in state if not found[t]}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: Mapping[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def quiet(fn: Callable[[], Report]) -> Report:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low coverage of unrelated draws
        return fn()


# --- the property ------------------------------------------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    spec=specs(),
    data=st.data(),
    tied_source=st.booleans(),
    prefix=st.sampled_from(["", "module.", "model."]),
    as_safetensors=st.booleans(),
    factory=st.booleans(),
    dry_run=st.booleans(),
    replan=st.booleans(),
)
def test_the_report_agrees_with_the_values_in_the_model(
    tmp_path_factory: pytest.TempPathFactory, spec: list[Spec], data: st.DataObject, tied_source: bool, prefix: str,
    as_safetensors: bool, factory: bool, dry_run: bool, replan: bool,
) -> None:
    counter = [1]
    source_model = build(spec, tied=tied_source)
    distinct_values(source_model, counter)
    state = source_model.state_dict()  # tied names and views keep sharing their tensors
    keys = list(state)
    dropped = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=3), label="dropped") if keys else []
    kept = [k for k in keys if k not in dropped]
    reshaped = data.draw(st.lists(st.sampled_from(kept), unique=True, max_size=2), label="reshaped") if kept else []
    half = data.draw(st.lists(st.sampled_from(kept), unique=True, max_size=2), label="half") if kept else []
    source: dict[str, torch.Tensor] = {}
    halved: dict[tuple[Any, ...], torch.Tensor] = {}  # cast once per tensor, so tied names stay one tensor
    for k in kept:
        t = state[k]
        if k in reshaped:
            t = torch.randn(*t.shape, 2) - counter[0]  # another shape: never loaded, always unused
            counter[0] += 1
        elif k in half and t.is_floating_point():
            view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            t = halved.setdefault(view, t.half())  # a cast on the way in; fp16 keeps the values distinct
        source[prefix + k] = t
    exclude = data.draw(st.sampled_from([None, *[f"{i}.*" for i in range(len(spec))]]), label="exclude")
    key_map = {}  # one source copied into two same-shaped targets (issue 10, item 5)
    built = build(spec)
    tstate = built.state_dict()
    storages = [v.untyped_storage().data_ptr() for v in tstate.values()]
    alone = [k for k, v in tstate.items() if storages.count(v.untyped_storage().data_ptr()) == 1]
    copies = [(a, b) for a in alone for b in alone if a < b and tstate[a].shape == tstate[b].shape
              and prefix + a in source and source[prefix + a].shape == tstate[a].shape]
    if copies and data.draw(st.booleans(), label="copy"):
        a, b = data.draw(st.sampled_from(copies), label="copied pair")
        key_map = {a: prefix + a, b: prefix + a}

    src: Any = source
    if as_safetensors and source:
        path = tmp_path_factory.mktemp("src") / "source.safetensors"
        write_safetensors(source, path)  # a tied tensor once, the other name in the metadata
        src = path
    # What the checkpoint holds, name by name: safetensors gives back every alias with the kept tensor's values.
    truth = {k: v.clone() for k, v in source.items()}

    target: nn.Module | Callable[[], nn.Module] = built
    before = snapshot(target) if isinstance(target, nn.Module) else {}
    if factory and not dry_run:
        target = lambda: build(spec)  # noqa: E731 - built on meta by transfer
    try:
        report = quiet(lambda: transfer(src, target, exclude=exclude, key_map=key_map, seed=0, dry_run=dry_run))
        model = report.model
        if dry_run:
            assert not report.applied
            assert_unchanged(model, before)
            planned = report
            report = quiet(lambda: transfer(src, model, plan=planned.plan, seed=0))
            assert report.mapping == planned.mapping, "the dry run's mapping is what re-applying its plan loads"
            assert set(report.unused) == set(planned.unused)
            assert set(report.missing_keys) == set(planned.missing_keys)
    except SharedMemoryConflictError as exc:
        # Refused when staging the values (a dry run reads none): views of one tensor would get
        # different values. Nothing may have changed.
        if isinstance(target, nn.Module):
            assert_unchanged(target, before)
        assert exc.keys
        event("refused: views would get different values")
        return
    assert_report_is_true(report, model, truth, before if isinstance(target, nn.Module) else None)
    for t, s in key_map.items():  # exclude= wins: "never loaded"
        if exclude is None or not fnmatch.fnmatchcase(t, exclude):
            assert report.mapping.get(t) == s, f"key_map {t} <- {s} was not honoured"
    event(f"loaded {min(len(report.mapping), 3)}+, missing {min(len(report.missing_keys), 3)}+, "
          f"unused {min(len(report.unused), 2)}+")

    if replan:
        plan_path = tmp_path_factory.mktemp("plan") / "plan.json"
        report.plan.save(plan_path)
        grown = {**source, "extra.weight": torch.randn(3) - 7.5}
        fresh = build(spec)
        again = quiet(lambda: transfer(grown, fresh, plan=Plan.load(plan_path), seed=0))
        assert "extra.weight" in again.unused
        assert_report_is_true(again, fresh, {**truth, "extra.weight": grown["extra.weight"]})


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=st.data(), as_module=st.booleans())
def test_a_source_that_is_the_target_moves_the_values_it_held(
    spec: list[Spec], data: st.DataObject, as_module: bool
) -> None:
    """``transfer(model, model, key_map=permutation)``: every key gets the value its source held before."""
    model = build(spec)
    distinct_values(model, [1])
    before = snapshot(model)
    state = model.state_dict()
    storages = [v.untyped_storage().data_ptr() for v in state.values()]
    alone = [k for k, v in state.items() if storages.count(v.untyped_storage().data_ptr()) == 1]
    groups: dict[tuple[Any, ...], list[str]] = {}
    for k in alone:
        groups.setdefault((tuple(state[k].shape), state[k].dtype), []).append(k)
    key_map = {}
    for keys in groups.values():
        for t, s in zip(keys, data.draw(st.permutations(keys), label=f"permutation of {keys}")):
            key_map[t] = s
    try:
        report = quiet(lambda: transfer(model if as_module else state, model, key_map=key_map, seed=0))
    except SharedMemoryConflictError:
        assert_unchanged(model, before)
        return
    assert {t: s for t, s in report.mapping.items() if t in key_map} == key_map
    assert_report_is_true(report, model, before, before)


def test_a_factory_keeps_two_parameters_over_one_view_shared() -> None:
    """Built on meta, ``a, b = Parameter(base), Parameter(base)`` stay one tensor, as the constructor makes it.

    The factory's model then is the one the constructor builds (two objects over one view),
    and its plan re-applies to a built model.
    """
    spec: list[Spec] = [("sameview", 2)]
    source_model = build(spec)
    distinct_values(source_model, [1])
    report = quiet(lambda: transfer(dict(source_model.state_dict()), lambda: build(spec), seed=0))
    model = report.model
    assert model[0].a.data_ptr() == model[0].b.data_ptr()
    assert (report.records["0.b"].status, report.records["0.b"].alias_of) == ("tied", "0.a")
    quiet(lambda: transfer(dict(source_model.state_dict()), build(spec), plan=report.plan))


def test_the_check_catches_a_report_that_lies() -> None:
    """The fingerprint check is not vacuous: each kind of lie about the model is caught."""
    source_model = build([("linear", 2, 3, True), ("tied", 4, 2)])
    distinct_values(source_model, [1])
    source = {k: v for k, v in source_model.state_dict().items() if k != "0.bias"}
    model = build([("linear", 2, 3, True), ("tied", 4, 2)])
    report = quiet(lambda: transfer(source, model, seed=0))
    assert_report_is_true(report, model, source)
    assert report.missing_keys == ["0.bias"] and report.unused == ()
    loaded = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1)  # "loaded", but holds other values
    with pytest.raises(AssertionError, match="0.weight is reported loaded from 0.weight"):
        assert_report_is_true(report, model, source)
    with torch.no_grad():
        model[0].weight.copy_(loaded)
        model[0].bias.copy_(source_model[0].bias)  # "initialized", but holds a source's values
    with pytest.raises(AssertionError, match="0.bias is reported kept, but holds the values of"):
        assert_report_is_true(report, model, {**source, "0.bias": source_model[0].bias})
    with pytest.raises(AssertionError, match="unused"):
        assert_report_is_true(report, model, {**source, "extra": torch.randn(3)})
