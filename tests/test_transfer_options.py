"""transfer()'s options: PlanOptions as one argument, the two renaming forms, one-string options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery import PlanOptions, Recipe, transfer
from weightsurgery.errors import PlanError


def pair() -> tuple[dict[str, torch.Tensor], nn.Sequential]:
    torch.manual_seed(0)
    source = {f"model.{k}": v for k, v in nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5)).state_dict().items()}
    return source, nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))


def test_a_string_exclude_excludes_what_it_names_and_loads_the_rest() -> None:
    source, model = pair()
    report = transfer(source, model, exclude="1.*", init="zeros")
    assert report.initialized == ["1.weight", "1.bias"]
    assert torch.equal(model[0].weight, source["model.0.weight"]) and torch.equal(model[0].bias, source["model.0.bias"])
    assert not model[1].weight.any() and not model[1].bias.any()
    assert report.records["1.weight"].evidence == "excluded by rule '1.*'"


def test_options_are_one_argument_and_a_keyword_replaces_its_field() -> None:
    source, model = pair()
    options = PlanOptions(exclude=["1.*"], strategies=["exact", "prefix"])
    assert transfer(source, model, options=options, dry_run=True).kept == ["1.weight", "1.bias"]
    report = transfer(source, model, options=options, exclude=(), dry_run=True)
    assert report.missing_keys == [] and set(report.mapping.values()) == set(source)
    assert {r.strategy for r in report.records.values()} == {"prefix"}


def test_rename_takes_a_transformers_key_mapping_and_loads_the_values() -> None:
    source, model = pair()
    report = transfer(source, model, rename={r"^model\.(\d+)\.": r"\1."}, strategies=["rename"])
    assert report.mapping == {f"{i}.{n}": f"model.{i}.{n}" for i in (0, 1) for n in ("weight", "bias")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, source[f"model.{k}"]), k


def test_key_map_fills_exactly_what_it_names() -> None:
    source, model = pair()
    source["other.w"] = source.pop("model.1.weight")
    report = transfer(source, model, key_map={"1.weight": "other.w"}, init="zeros")
    assert report.records["1.weight"].strategy == "explicit" and torch.equal(model[1].weight, source["other.w"])
    assert transfer(source, model, key_map=report.mapping, dry_run=True).mapping == report.mapping  # round trip


def test_an_exact_map_given_as_rename_fails_before_the_model_changes() -> None:
    source, model = pair()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=r"pass it as key_map=\{'1.weight': 'model.0.weight'\}"):
        transfer(source, model, rename={"1.weight": "model.0.weight"})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_recipe_combines_with_a_key_map_and_rules() -> None:
    source, model = pair()
    source["other.w"] = source.pop("model.1.weight")
    recipe = Recipe(rename={r"^model\.": ""}, key_map={"1.weight": "other.w"})
    report = transfer(source, model, recipe=recipe, key_map={"1.bias": "model.1.bias"},
                      strategies=["explicit", "rename"])
    assert report.mapping == {"0.weight": "model.0.weight", "0.bias": "model.0.bias",
                              "1.weight": "other.w", "1.bias": "model.1.bias"}
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe and recipe.to_dict()["key_map"] == {"1.weight": "other.w"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"excludes": "1.*"}, r"unexpected keyword argument 'excludes'; did you mean 'exclude'\?"),
        ({"keymap": {}}, r"unexpected keyword argument 'keymap'; did you mean 'key_map'\?"),
        ({"dryrun": True}, r"unexpected keyword argument 'dryrun'; did you mean 'dry_run'\?"),
        ({"options": {"exclude": "1.*"}}, r"options= takes a PlanOptions, not dict"),
    ],
)
def test_a_wrong_keyword_is_a_type_error_with_the_nearest_name(kwargs: dict, message: str) -> None:
    source, model = pair()
    with pytest.raises(TypeError, match=message):
        transfer(source, model, **kwargs)


def test_parallelize_shapes_a_factory_target_before_it_is_planned_and_filled(tmp_path) -> None:
    """One process (no torch.distributed): parallelize= still runs on the meta-built model, and its result is filled."""
    from safetensors.torch import save_file

    source = small_convnet()
    save_file({f"body.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    seen = []

    class Wrapped(nn.Module):  # what a caller's parallelize may return: another module around the built one
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.body = inner

    def parallelize(model: nn.Module) -> nn.Module:
        seen.append(all(p.is_meta for p in model.parameters()))
        return Wrapped(model)

    report = transfer(tmp_path / "w.safetensors", f"{__name__}:small_convnet", parallelize=parallelize)
    assert seen == [True]  # called once, on meta, before anything was read
    assert isinstance(report.model, Wrapped)
    assert report.mapping == {f"body.{k}": f"body.{k}" for k in source.state_dict()}
    for key, value in source.state_dict().items():
        assert torch.equal(report.model.body.state_dict()[key], value)


def test_parallelize_refuses_a_built_module_and_a_non_callable() -> None:
    model = small_convnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"a built module is sharded before the call"):
        transfer(small_convnet().state_dict(), model, parallelize=lambda m: m)
    with pytest.raises(TypeError, match=r"parallelize= must be a callable model -> model, not int"):
        transfer(model.state_dict(), f"{__name__}:small_convnet", parallelize=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def small_convnet() -> nn.Module:
    """A small factory (module:callable) for the parallelize= tests."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
