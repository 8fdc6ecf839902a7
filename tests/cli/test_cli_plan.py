"""``weightsurgery plan``: a dry run that prints the grouped plan and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from weightsurgery.cli.main import main
from weightsurgery.match.plan import Action, Plan


def test_plan_json_and_saved_mapping(cli, tmp_path: Path, nested_ckpt: Path):
    result = cli("plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3", "--json",
                     "--save-mapping", "mapping.json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["applied"] is False
    assert data["initialized"] == [] and data["kept"] == ["head.weight", "head.bias"]
    assert data["missing_keys"] == ["head.weight", "head.bias"]
    assert data["unused"] == ["model.head.weight", "model.head.bias"]
    assert data["ambiguous"] == []
    assert 0.5 < data["coverage"] < 1.0
    plan = Plan.load(tmp_path / "mapping.json")
    assert [e.target for e in plan.by_action(Action.INIT)] == ["head.weight", "head.bias"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "mapping.json"]  # nothing else written


def test_plan_table_lists_every_section_with_init_specs(nested_ckpt: Path, capsys):
    code = main(["plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3",
                 "--rule", "head.weight=zeros", "--init", "ones"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "coverage" in out
    assert "loaded (7)" in out and "initialized (2)" in out and "unused source keys (2)" in out
    assert "zeros" in out and "ones" in out  # the spec each initialized key gets
    assert "model.head.{weight,bias}" in out


def test_plan_table_shows_kept_leftovers_with_the_constructor(nested_ckpt: Path, capsys):
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "initialized 0, kept 2, unused 2" in out
    kept = next(line for line in out.splitlines() if line.startswith("kept (2)"))
    assert "constructor" in kept and "head.{weight,bias}" in kept and "initialized (" not in out


def test_plan_quiet_prints_nothing(nested_ckpt: Path, capsys):
    assert main(["--quiet", "plan", str(nested_ckpt), "cli_models:tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_plan_strict_fails_with_the_flag_to_drop(nested_ckpt: Path, capsys):
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3", "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: strict=True")
    assert "(on the command line: drop --strict, or map with --rename, --key-map or --recipe)" in err
    assert "head.{weight,bias}" in err


def test_bad_rule_is_a_cli_error(nested_ckpt: Path, capsys):
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--rule", "head.*"]) == 1
    assert capsys.readouterr().err.startswith("error: --rule 'head.*' is not PATTERN=SPEC")


def test_rename_key_map_and_exclude_flags_reach_the_plan(nested_ckpt: Path, capsys):
    code = main(["--json", "plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "5",
                 "--rename", r"^model\.head\.", "head.", "--key-map", "body.bias", "model.body.bias",
                 "--exclude", "norm.*"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    records = {r["target"]: r for r in data["records"]}
    assert (records["head.weight"]["strategy"], records["head.weight"]["source"]) == ("rename", "model.head.weight")
    assert (records["body.bias"]["strategy"], records["body.bias"]["source"]) == ("explicit", "model.body.bias")
    assert records["body.weight"]["strategy"] == "prefix"
    norm = [k for k in records if k.startswith("norm.")]
    assert data["kept"] == norm and {records[k]["evidence"] for k in norm} == {"excluded by rule 'norm.*'"}


def test_an_exact_map_passed_as_rename_points_at_key_map(nested_ckpt: Path, capsys):
    code = main(["plan", str(nested_ckpt), "cli_models:tiny", "--rename", "body.bias", "model.body.bias"])
    assert code == 1
    err = capsys.readouterr().err
    assert "reads as an exact {target_key: source_key} map; pass it as key_map=" in err


def test_a_key_map_target_given_twice_is_a_cli_error(nested_ckpt: Path, capsys):
    code = main(["plan", str(nested_ckpt), "cli_models:tiny", "--key-map", "body.bias", "model.body.bias",
                 "--key-map", "body.bias", "model.head.bias"])
    assert code == 1
    assert capsys.readouterr().err.startswith(
        "error: --key-map body.bias is given twice (model.body.bias, model.head.bias); give it once")
