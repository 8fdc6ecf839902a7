"""The report is always true: a hypothesis property checked by fingerprinting tensors.

Random small models, with and without tied weights and two parameters over one
view, random sources (a wrapper prefix, dropped keys, reshaped keys, extra keys,
tied source names), applied, dry-run, or re-applied from a saved plan onto
another checkpoint. Every source tensor holds distinct random values, so where
each target tensor's values came from is read off the model afterwards, and
``mapping``, ``initialized``, ``unused``, ``missing_keys`` and
``unexpected_keys`` must agree with it exactly.
"""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from weightsurgery import transfer


class Model(nn.Module):
    """A small tree; optionally an LM head tied to its embedding, and two parameters over one view."""

    def __init__(self, widths: list[int], tied: bool, same_view: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, widths[0])
        self.blocks = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths, widths[1:])))
        self.norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[0], 5, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        if same_view:
            base = torch.zeros(2, 3)
            self.a, self.b = nn.Parameter(base), nn.Parameter(base)


@st.composite
def cases(draw: st.DrawFn) -> dict:
    return {
        "widths": draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)),
        "tied": draw(st.booleans()),
        "same_view": draw(st.booleans()),
        "source_tied": draw(st.booleans()),
        "prefix": draw(st.sampled_from(["", "module.", "model."])),
        "mode": draw(st.sampled_from(["apply", "dry_run", "replan"])),
        "seed": draw(st.integers(0, 2**16)),
        "data": draw(st.data()),
    }


def fingerprint_source(model: nn.Module, case: dict) -> dict[str, torch.Tensor]:
    """The model's own keys with fresh random values; some dropped, reshaped, tied, plus extras."""
    data = case["data"]
    keys = list(model.state_dict())
    source: dict[str, torch.Tensor] = {}
    dropped = set(data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)))
    reshaped = set(data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=2)))
    for k in keys:
        if k in dropped:
            continue
        shape = tuple(model.state_dict()[k].shape)
        source[case["prefix"] + k] = torch.randn(*shape, 2) if k in reshaped else torch.randn(shape)
    emb, head = case["prefix"] + "embed.weight", case["prefix"] + "head.weight"
    if case["source_tied"] and emb in source and head in source and source[emb].shape == source[head].shape:
        source[head] = source[emb]  # one tensor under two names, as torch.save keeps it
    for i in range(data.draw(st.integers(0, 2))):
        source[f"extra.{i}"] = torch.randn(3)
    return source


def check(report, model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """The report of an applied transfer against the values in ``model``."""
    state = model.state_dict()
    records = report.records
    assert set(records) == set(state)
    # where each target tensor's values came from, read off the model
    origin = {k: [s for s, t in source.items() if t.shape == v.shape and torch.equal(t, v)] for k, v in state.items()}
    filled = set()
    for k, r in records.items():
        canon = r.alias_of if r.status == "tied" else k
        if records[canon].status == "loaded":
            filled.add(k)
            assert report.mapping[canon] in origin[k], f"{k} reported loaded from {report.mapping[canon]}"
        else:
            assert k not in report.mapping
            assert origin[k] == [], f"{k} reported {records[canon].status} but holds the values of {origin[k]}"
    assert set(report.mapping) == {k for k in filled if records[k].status != "tied"}
    assert set(report.initialized) <= set(state) - filled
    assert sorted(report.missing_keys) == sorted(set(state) - filled)  # aliases of a missing key are missing
    landed = {s for names in origin.values() for s in names}
    assert set(report.unused) == set(source) - landed  # exactly the source keys whose values went nowhere
    assert report.unexpected_keys == list(report.unused)


def twin(model: Model, case: dict) -> Model:
    """A second model of the same structure and values (deepcopy would clone the shared views apart)."""
    other = Model(case["widths"], case["tied"], case["same_view"])
    with torch.no_grad():
        for k, v in other.state_dict().items():
            v.copy_(model.state_dict()[k])
    return other


def fields(report) -> tuple:
    return report.mapping, sorted(report.missing_keys), report.unused, report.unexpected_keys


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_report_agrees_with_the_model(case: dict) -> None:
    torch.manual_seed(case["seed"])
    model = Model(case["widths"], case["tied"], case["same_view"])
    source = fingerprint_source(model, case)
    before = twin(model, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case["mode"] == "replan":
            plan = transfer(source, twin(model, case), dry_run=True).plan
            change = case["data"].draw(st.sampled_from(["same", "fewer", "more"]))
            read = set(plan.mapping.values())
            if change == "fewer":
                source = {k: v for k, v in source.items() if not k.startswith("extra.") or k in read}
            elif change == "more":
                source = {**source, "late.extra": torch.randn(2)}
            report = transfer(source, model, plan=plan)
        elif case["mode"] == "dry_run":
            report = transfer(source, model, dry_run=True)
            for k, v in model.state_dict().items():
                assert torch.equal(v, before.state_dict()[k]), f"the dry run changed {k}"
            model = before
            applied = transfer(source, model)
            assert fields(report) == fields(applied)  # the dry run told the truth about the transfer
            report = applied
        else:
            report = transfer(source, model)
    check(report, model, source)
