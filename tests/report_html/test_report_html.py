"""The page's data and file: every key, both trees grouped like the text report, safe JSON, atomic writes."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from html_models import Net, source_state

from weightsurgery import Report, transfer
from weightsurgery._grouping import expand_group
from weightsurgery.cli.main import main
from weightsurgery.report_html import page_data, render_html

DATA = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def _embedded(page: str) -> dict:
    found = DATA.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def _walk(node: dict) -> list[dict]:
    return [node, *(n for c in node["children"] for n in _walk(c))]


def test_every_target_key_is_in_the_page_with_its_status(report: Report) -> None:
    data = _embedded(render_html(report))
    views = {r["target"]: r["view"] for r in data["records"]}
    assert list(views) == list(report.records)
    assert {k for k, v in views.items() if v == "ambiguous"} == set(report.ambiguous) == {"side.proj.weight"}
    for key, record in report.records.items():
        assert views[key] == ("ambiguous" if key in report.ambiguous else record.status)
    assert set(views.values()) == {"loaded", "adapted", "initialized", "kept", "ambiguous", "tied"}
    assert data["coverage"] == {"params": [report.num_loaded_params, report.num_params], "tensors": [24, 27]}
    assert data["unused"] == list(report.unused)


def test_numbered_siblings_are_one_node_and_counts_add_up(report: Report) -> None:
    data = page_data(report)
    nodes = {n["path"]: n for n in _walk(data["target_tree"])}
    blocks = nodes["blocks.{0..2}"]  # the text report's grouping: blocks.{0..2}.0.{weight,bias}
    assert sorted(data["records"][i]["target"] for i in blocks["items"]) == sorted(
        k for k in report.records if k.startswith("blocks."))
    assert sorted(expand_group("blocks.{0..2}")) == ["blocks.0", "blocks.1", "blocks.2"]
    assert blocks["counts"] == {"loaded": 21}
    root = data["target_tree"]
    assert sum(root["params"].values()) == report.num_params
    assert root["params"]["ambiguous"] == 32 and root["params"]["adapted"] == 72
    source = {n["path"]: n for n in _walk(data["source_tree"])}
    assert source["model.{aux_a,aux_b}"]["counts"] == {"unused": 2}
    assert source["model.head"]["counts"] == {"unused": 2}


def test_the_rename_line_of_an_ambiguous_key_resolves_it_when_pasted(report: Report) -> None:
    record = next(r for r in page_data(report)["records"] if r["view"] == "ambiguous")
    assert [c["source"] for c in record["candidates"]] == ["model.aux_a.proj.weight", "model.aux_b.proj.weight"]
    chosen = record["candidates"][1]
    rename = ast.literal_eval(chosen["rename"].removeprefix("rename="))
    state = source_state()
    target = Net(1, 10, target=True)
    again = transfer(state, target, rename=rename, seed=0)
    assert again.mapping["side.proj.weight"] == "model.aux_b.proj.weight"
    assert torch.equal(target.side.proj.weight, state["model.aux_b.proj.weight"])


def test_no_key_or_message_can_close_the_script_or_inject_markup() -> None:
    evil = '</script><img src="http://127.0.0.1:9/x"><!--&\u2028'
    state = {evil: torch.zeros(2)}
    with pytest.warns(UserWarning, match="nothing loaded"):
        report = transfer(state, torch.nn.Linear(3, 2), dry_run=True)
    page = render_html(report, target="<b>target</b>")
    assert page.count("</script>") == 2  # the data's and the script's own, none from the key
    assert "<img" not in page and "<b>target" not in page
    data = _embedded(page)
    assert data["unused"] == [evil] and data["target"] == "<b>target</b>"


def test_the_page_is_self_contained(report: Report) -> None:
    page = render_html(report)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_to_html_writes_atomically_and_the_cli_writes_it_on_plan_and_transfer(
        report: Report, tmp_path: Path, capsys) -> None:
    out = report.to_html(tmp_path / "r.html", target="mine")
    assert _embedded(out.read_text())["target"] == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left beside it

    ckpt = tmp_path / "tiny.pth"
    torch.save(torch.nn.Linear(4, 3).state_dict(), ckpt)
    page = tmp_path / "plan.html"
    target = "torch.nn:Linear"
    assert main(["plan", str(ckpt), target, "--kw", "in_features=4", "--kw", "out_features=3", "--html", str(page)]) == 0
    assert {r["target"]: r["view"] for r in _embedded(page.read_text())["records"]} == {
        "weight": "loaded", "bias": "loaded"}
    assert main(["plan", str(ckpt), target, "--kw", "in_features=4", "--kw", "out_features=3", "--html", str(page)]) == 1
    assert "already exists" in capsys.readouterr().err
    page2 = tmp_path / "transfer.html"
    assert main(["transfer", str(ckpt), target, "--kw", "in_features=4", "--kw", "out_features=5",
                 "-o", str(tmp_path / "out.safetensors"), "--html", str(page2)]) == 0
    data = _embedded(page2.read_text())
    assert data["applied"] is True and data["target"] == target
    assert {r["target"]: r["view"] for r in data["records"]} == {"weight": "kept", "bias": "kept"}
