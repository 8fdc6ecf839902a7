"""PlanOptions: one normalisation for every "one string or several" option, and the two renaming forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.errors import PlanError
from weightsurgery.match.options import PlanOptions, as_strings
from weightsurgery.match.plan import Action
from weightsurgery.match.planner import make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def metas(**shapes: tuple[int, ...]) -> dict[str, TensorMeta]:
    return {k.replace("__", "."): TensorMeta(v, torch.float32) for k, v in shapes.items()}


LINEAR = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 3)))
ENC = metas(enc__w=(3, 2), enc__b=(3,))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("exclude", "fc.*", ("fc.*",)),
        ("exclude", ["fc.*", "re:head"], ("fc.*", "re:head")),
        ("exclude", None, ()),
        ("strategies", "exact", ("exact",)),
        ("source_labels", "cat", ("cat",)),
        ("classes", "cat", ("cat",)),
        ("classes", [3, "dog"], (3, "dog")),
    ],
)
def test_one_string_is_one_item_never_its_characters(name: str, value: object, expected: tuple) -> None:
    assert getattr(PlanOptions(**{name: value}), name) == expected


def test_a_string_exclude_excludes_only_what_it_names() -> None:
    spec = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4)))
    source = metas(**{"0__weight": (3, 2), "0__bias": (3,), "1__weight": (4, 3), "1__bias": (4,)})
    plan = make_plan(source, spec, PlanOptions(exclude="1.*"))
    assert plan.mapping == {"0.weight": "0.weight", "0.bias": "0.bias"}
    assert plan.entries["1.weight"].evidence == "excluded by rule '1.*'"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("exclude", {"fc.*": 1}, r"exclude=\{'fc.\*': 1\}: give one string or a list of strings"),
        ("exclude", ["fc.*", 3], r"exclude holds 3, which is not a string"),
        ("strategies", b"exact", r"strategies=b'exact': give one string or a list of strings"),
        ("classes", 5, r"classes=5 names one class index; pass classes=\[5\] .* target_kwargs=\{'num_classes': 5\}"),
        ("classes", [1.5], r"classes holds 1.5; each class is an index or a label name"),
        ("on_mismatch", "guess", r"on_mismatch='guess'; valid values are 'init', 'adapt', 'error'"),
    ],
)
def test_a_wrong_form_names_the_option(name: str, value: object, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        PlanOptions(**{name: value})


def test_as_strings_keeps_order() -> None:
    assert as_strings(("b", "a"), "exclude") == ("b", "a")


def test_rename_takes_a_dict_or_pairs_in_order() -> None:
    assert PlanOptions(rename={r"^enc\.w$": "0.weight", r"^enc\.b$": "0.bias"}).rename == (
        (r"^enc\.w$", "0.weight"), (r"^enc\.b$", "0.bias"),
    )
    plan = make_plan(ENC, LINEAR, PlanOptions(rename={r"^enc\.w$": "0.weight", r"^enc\.b$": "0.bias"}))
    assert plan.mapping == {"0.weight": "enc.w", "0.bias": "enc.b"}
    assert {e.strategy for e in plan.entries.values()} == {"rename"}


def test_a_transformers_style_key_mapping_loads_through_rename() -> None:
    source = metas(**{"model__layers__0__weight": (3, 2), "model__layers__0__bias": (3,)})
    plan = make_plan(source, LINEAR, PlanOptions(rename={r"^model\.layers\.(\d+)\.": r"\1."}, strategies=["rename"]))
    assert plan.mapping == {"0.weight": "model.layers.0.weight", "0.bias": "model.layers.0.bias"}


def test_key_map_is_exact_and_runs_first() -> None:
    plan = make_plan(ENC, LINEAR, PlanOptions(key_map={"0.weight": "enc.w"}, strategies=["explicit", "exact"]))
    assert plan.entries["0.weight"].strategy == "explicit" and plan.entries["0.weight"].source == "enc.w"
    assert plan.entries["0.bias"].action is Action.INIT  # no name matches enc.b
    assert plan.unused == ("enc.b",)


def test_an_exact_map_given_to_rename_names_key_map() -> None:
    with pytest.raises(PlanError, match=(
        r"rename=\{'0.weight': 'enc.w', '0.bias': 'enc.b'\} renames no source key to a target key and reads as "
        r"an exact \{target_key: source_key\} map; pass it as key_map=\{'0.weight': 'enc.w', '0.bias': 'enc.b'\}"
    )) as info:
        make_plan(ENC, LINEAR, PlanOptions(rename={"0.weight": "enc.w", "0.bias": "enc.b"}))
    assert info.value.problems == ("0.weight <- enc.w", "0.bias <- enc.b")


def test_a_swap_is_a_key_map_and_a_live_rule_in_the_same_shape_is_not_refused() -> None:
    spec = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    source = metas(**{"0__weight": (2, 2), "0__bias": (2,), "1__weight": (2, 2), "1__bias": (2,)})
    plan = make_plan(source, spec, PlanOptions(key_map={"0.weight": "1.weight", "1.weight": "0.weight"}))
    assert plan.mapping == {"0.weight": "1.weight", "0.bias": "0.bias", "1.weight": "0.weight", "1.bias": "1.bias"}
    # '0.weight' is a target key and '1.weight' a source key, but the rule does rename a source key
    # (0.weight -> 1.weight) into a target key: it is a working regex rule, not a misplaced exact map.
    plan = make_plan(source, spec, PlanOptions(rename={"0.weight": "1.weight"}, strategies=["rename"]))
    assert plan.mapping == {"1.weight": "0.weight"}


def test_a_swap_written_as_rename_rules_is_refused_since_the_rules_chain_back() -> None:
    """Rules chain: 0.weight -> 1.weight -> 0.weight is no rename at all; the swap belongs in key_map."""
    spec = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)))
    source = metas(**{"0__weight": (2, 2), "1__weight": (2, 2)})
    with pytest.raises(PlanError, match=r"rename=\{'0.weight': '1.weight'\} renames no source key .* key_map="):
        make_plan(source, spec, PlanOptions(rename={"0.weight": "1.weight", "1.weight": "0.weight"}))


def test_a_rule_that_only_touches_a_substring_is_still_refused() -> None:
    """'body.bias' matches inside 'model.body.bias', but renames it to no target key: an exact map, misplaced."""
    spec = TargetSpec.from_module(nn.ModuleDict({"body": nn.Linear(2, 3)}))
    source = metas(model__body__weight=(3, 2), model__body__bias=(3,))
    with pytest.raises(PlanError, match=r"pass it as key_map=\{'body.bias': 'model.body.bias'\}"):
        make_plan(source, spec, PlanOptions(rename={"body.bias": "model.body.bias"}))


def test_regex_rules_given_to_key_map_name_rename() -> None:
    with pytest.raises(PlanError, match=(
        r"key_map keys \['\^enc\\\\.\(\.\*\)'\] are not target keys and read as regex patterns; .*"
        r"pass regex rules as rename="
    )):
        make_plan(ENC, LINEAR, PlanOptions(key_map={r"^enc\.(.*)": r"0.\1"}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rename": r"^module\."}, r"rename='\^module\\\\.': rename takes regex rules .* use key_map="),
        ({"rename": [r"^module\."]}, r"rename rule #0 is '\^module\\\\.'; each rule is a \(pattern, replacement\) "
                                     r"pair of strings, .* use key_map="),
        ({"rename": {"(": "x"}}, r"rename rule #0: '\(' is not a valid regex"),
        ({"key_map": [("0.weight", "enc.w")]}, r"key_map takes an exact mapping \{target_key: source_key\}; "
                                               r"for regex rules \[\(pattern, replacement\), \.\.\.\] on source keys "
                                               r"use rename="),
        ({"key_map": {"0.weight": 1}}, r"key_map entry \('0.weight', 1\): both the target key and the source key"),
    ],
)
def test_a_wrong_type_names_the_other_parameter(kwargs: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        PlanOptions(**kwargs)
