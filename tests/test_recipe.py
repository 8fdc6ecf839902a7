"""Recipes: round trips through dict/JSON/YAML/files, and errors that name the file and field."""

from __future__ import annotations

import json

import pytest

from weightsurgery.adapt import AdaptRule
from weightsurgery.errors import RecipeError, SourceNotFoundError
from weightsurgery.recipe import RECIPE_FORMAT, Recipe

RECIPE = Recipe(
    rename=((r"^module\.", ""), (r"\.gamma$", ".weight")),
    adapt=(
        AdaptRule("pos_embed", "pos_embed", {"interpolation": "bilinear"}),
        AdaptRule(
            r"re:blocks\.(\d+)\.attn\.qkv\.weight",
            "fuse",
            sources=(r"blocks.\1.attn.q.weight", r"blocks.\1.attn.k.weight", r"blocks.\1.attn.v.weight"),
        ),
    ),
    init={"head.*": "zeros", "*": "trunc_normal(std=0.02)"},
    description="vit 224 -> 384",
)


def test_dict_json_yaml_round_trips():
    assert Recipe.from_dict(RECIPE.to_dict()) == RECIPE
    assert Recipe.from_json(RECIPE.to_json()) == RECIPE
    assert Recipe.from_yaml(RECIPE.to_yaml()) == RECIPE
    data = RECIPE.to_dict()
    assert data["format"] == RECIPE_FORMAT
    assert list(data["init"]) == ["head.*", "*"]  # order kept
    assert data["rename"] == {r"^module\.": "", r"\.gamma$": ".weight"}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_and_load_by_suffix(tmp_path, suffix):
    path = tmp_path / f"recipe{suffix}"
    RECIPE.save(path)
    assert Recipe.load(path) == RECIPE
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    if suffix == ".json":
        assert json.loads(path.read_text())["description"] == "vit 224 -> 384"


def test_pairs_lists_are_accepted_and_empty_documents_are_empty_recipes(tmp_path):
    r = Recipe.from_yaml("rename:\n  - ['^net\\.', '']\ninit:\n  - ['fc.*', 'zeros']\n")
    assert r.rename == ((r"^net\.", ""),) and r.init == {"fc.*": "zeros"}
    assert Recipe.from_yaml("") == Recipe()


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("renames: {}\n", "renames", r"unknown recipe field\(s\) renames; valid fields are format, description"),
        ("format: other/2\n", "format", r"format is 'other/2'; this version reads 'weightsurgery.recipe/1'"),
        ("rename: [[1, 2]]\n", "rename[0]", r"rename\[0\] is \[1, 2\]; each entry is a pair of strings"),
        ("rename: {'(': ''}\n", "rename[0]", r"rename\[0\]: '\(' is not a valid regex"),
        ("adapt: [{pattern: x, adapter: nope}]\n", "adapt[0]", r"adapt\[0\]: no adapter named 'nope'"),
        ("adapt: [{pattern: x}]\n", "adapt[0]", r"adapt\[0\]: adapt rule .* missing field\(s\) \['adapter'\]"),
        ("adapt: {pattern: x}\n", "adapt", r"adapt must be a list of rules"),
        ("init: {'fc.*': 'zeroes'}\n", "init[0]", r"init\[0\] \('fc.\*'\): "),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, text, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=rf"^{path}: {message}") as info:
        Recipe.load(path)
    assert info.value.path == str(path) and info.value.field == field


def test_bad_syntax_suffix_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(RecipeError, match=rf"^{bad}: not valid JSON"):
        Recipe.load(bad)
    with pytest.raises(RecipeError, match=r"unknown recipe suffix '.toml'; use one of .json, .yaml, .yml"):
        Recipe.load(tmp_path / "r.toml")
    with pytest.raises(SourceNotFoundError, match=r"recipe file .*missing.yaml does not exist"):
        Recipe.load(tmp_path / "missing.yaml")


def test_duplicate_init_patterns_are_refused():
    with pytest.raises(RecipeError, match=r"init lists pattern\(s\) \['fc.\*'\] more than once"):
        Recipe(init=[("fc.*", "zeros"), ("fc.*", "ones")])
