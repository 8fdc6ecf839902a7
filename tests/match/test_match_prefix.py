"""The prefix strategy: wrapper prefixes stripped or added, per subtree, scored by shape fit, ties abstain."""

from __future__ import annotations

import pytest
import torch
from name_cases import Net, ctx_for, pairs  # tests/match/name_cases.py
from torch import nn

from weightsurgery.match.names import match_exact
from weightsurgery.match.prefix import match_prefix


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod.", "bert."])
def test_prefix_stripped_from_source(prefix: str) -> None:
    keys = {f"{prefix}{k}": tuple(v.shape) for k, v in Net().state_dict().items()}
    result = match_prefix(ctx_for(keys, Net()))
    assert pairs(result) == {k: f"{prefix}{k}" for k in Net().state_dict()}
    assert all(repr(prefix) in m.evidence for m in result.matches)


def test_prefix_added_to_source_keys() -> None:
    wrapped = nn.Sequential()
    wrapped.add_module("backbone", Net())
    keys = {k: tuple(v.shape) for k, v in Net().state_dict().items()}
    assert pairs(match_prefix(ctx_for(keys, wrapped))) == {f"backbone.{k}": k for k in keys}


@pytest.mark.parametrize("heads", [1, 4, 6])  # up to 4 first components are screened by substring, more are not
def test_prefix_added_finds_every_wrapped_key_whatever_the_source_heads(heads: int) -> None:
    plain = nn.ModuleDict({f"part{i}": nn.Linear(2, 2) for i in range(heads)})
    plain["root_scale"] = nn.Linear(2, 2, bias=False) if heads > 1 else nn.Identity()
    wrapped = nn.ModuleDict({"model": nn.ModuleDict({"backbone": plain})})
    keys = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    expected = {f"model.backbone.{k}": k for k in keys}
    assert pairs(match_prefix(ctx_for(keys, wrapped))) == expected
    # the target's own numbered or unrelated keys that merely contain a head's name stay out
    mixed = nn.ModuleDict({"model": nn.ModuleDict({"backbone": plain}), "part0s": nn.Linear(2, 2)})
    assert pairs(match_prefix(ctx_for(keys, mixed))) == expected


def test_prefix_detected_per_subtree_not_only_when_every_key_has_it() -> None:
    # Only the stem was wrapped (e.g. a compiled submodule); the head keeps its name.
    keys = {"stem._orig_mod.weight": (3, 2), "stem._orig_mod.bias": (3,)}
    source = {"_orig_mod.stem.weight": (3, 2), "_orig_mod.stem.bias": (3,), "head.weight": (4, 3), "head.bias": (4,)}
    del keys
    ctx = ctx_for(source, Net())
    exact = pairs(match_exact(ctx))
    assert exact == {"head.weight": "head.weight", "head.bias": "head.bias"}
    ctx.open_targets = [t for t in ctx.open_targets if t not in exact]
    ctx.open_sources = [s for s in ctx.open_sources if s not in exact.values()]
    assert pairs(match_prefix(ctx)) == {"stem.weight": "_orig_mod.stem.weight", "stem.bias": "_orig_mod.stem.bias"}


def test_prefix_ambiguity_abstains_and_names_both_candidates() -> None:
    # Target "weight" could come from "a.weight" or "b.weight": equal support, nothing tells them apart.
    ctx = ctx_for({"a.weight": (3, 2), "b.weight": (3, 2)}, nn.Linear(2, 3))
    result = match_prefix(ctx)
    assert pairs(result) == {}
    (abstain,) = [a for a in result.abstentions if a.target == "weight"]
    assert "a.weight" in abstain.reason and "b.weight" in abstain.reason


def test_prefix_with_more_support_wins() -> None:
    # "model." explains both keys; "extra." explains one: the well-supported prefix wins.
    ctx = ctx_for({"model.weight": (3, 2), "model.bias": (3,), "extra.weight": (3, 2)}, nn.Linear(2, 3))
    assert pairs(match_prefix(ctx)) == {"weight": "model.weight", "bias": "model.bias"}


def test_prefix_never_strips_a_numeric_component() -> None:
    # "model.1.0.weight" must not fill "0.weight" by stripping "model.1.": that shifts indices.
    target = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3)))
    ctx = ctx_for({"model.1.0.weight": (3, 3), "model.1.0.bias": (3,)}, target)
    assert pairs(match_prefix(ctx)) == {"1.0.weight": "model.1.0.weight", "1.0.bias": "model.1.0.bias"}


def test_a_contested_source_goes_to_the_better_supported_prefix() -> None:
    # "model.stem.weight" explains "stem.weight" (prefix "model.", 4 keys) better than it
    # explains a hypothetical "weight" (prefix "model.stem.", 1 key).
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3, 2))
            self.stem = nn.Linear(2, 3)
            self.head = nn.Linear(3, 4)

    keys = {f"model.{k}": tuple(v.shape) for k, v in Net().state_dict().items()}
    result = match_prefix(ctx_for(keys, Both()))
    assert pairs(result) == {k: f"model.{k}" for k in Net().state_dict()}


def test_a_wrapper_that_fits_in_shape_beats_a_second_model_that_only_shares_names() -> None:
    # A distillation checkpoint: the student under "model._orig_mod.", a wider teacher under "teacher.".
    # Same names, and "teacher.head.bias" even has the right shape: shape fit, not name count, decides.
    source = {f"model._orig_mod.{k}": tuple(v.shape) for k, v in Net().state_dict().items()}
    source.update({"teacher.stem.weight": (5, 2), "teacher.stem.bias": (5,), "teacher.head.weight": (4, 5),
                   "teacher.head.bias": (4,)})
    result = match_prefix(ctx_for(source, Net()))
    assert pairs(result) == {k: f"model._orig_mod.{k}" for k in Net().state_dict()}
    assert "(4 of 4 keys fit in shape)" in result.matches[0].evidence


def test_two_prefixes_that_fit_equally_abstain_whatever_their_names() -> None:
    # 'model.' is a common wrapper name and 'model_ema.' is not: a list of names is no evidence, so abstain.
    keys = {f"{p}{k}": tuple(v.shape) for p in ("model.", "model_ema.") for k, v in Net().state_dict().items()}
    result = match_prefix(ctx_for(keys, Net()))
    assert pairs(result) == {}
    assert {a.target: a.candidates for a in result.abstentions} == {
        k: (f"model.{k}", f"model_ema.{k}") for k in Net().state_dict()
    }
    assert result.abstentions[0].reason == (
        "ambiguous prefix match: model.stem.weight, model_ema.stem.weight fit stem.weight equally; "
        "pass key= or key_map= to choose"
    )


@pytest.mark.parametrize("side", ["source", "target"])
def test_an_encoder_decoder_tie_abstains_naming_both(side: str) -> None:
    # encoder. and decoder. explain the same keys equally well, stripped from the source or added to the target.
    if side == "source":
        keys = {f"{p}{k}": tuple(v.shape) for p in ("encoder.", "decoder.") for k, v in Net().state_dict().items()}
        result = match_prefix(ctx_for(keys, Net()))
        expected = {k: (f"decoder.{k}", f"encoder.{k}") for k in Net().state_dict()}
    else:
        both = nn.ModuleDict({"encoder": Net(), "decoder": Net()})
        result = match_prefix(ctx_for({k: tuple(v.shape) for k, v in Net().state_dict().items()}, both))
        expected = {f"{p}{k}": (k,) for p in ("encoder.", "decoder.") for k in Net().state_dict()}
    assert pairs(result) == {}
    assert {a.target: a.candidates for a in result.abstentions} == expected
    if side == "target":
        assert result.abstentions[0].reason == (
            "ambiguous prefix match: stem.weight fits encoder.stem.weight, decoder.stem.weight equally; "
            "pass key= or key_map= to choose"
        )


def test_an_encoder_decoder_tie_reaches_report_ambiguous_and_loads_nothing() -> None:
    from weightsurgery import transfer

    source = {f"{p}{k}": v for p in ("encoder.", "decoder.") for k, v in Net().state_dict().items()}
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer(source, model, dry_run=True)
    assert report.mapping == {}
    assert report.ambiguous == list(Net().state_dict())
    for k in report.ambiguous:  # both candidates named (as keys by prefix, as modules by structure)
        module = k.rsplit(".", 1)[0]
        assert f"decoder.{module}" in report.records[k].evidence and f"encoder.{module}" in report.records[k].evidence
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
