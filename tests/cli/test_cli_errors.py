"""User mistakes exit 1 with one ``error:`` line naming the file or key and the fix."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from weightsurgery.cli._errors import ERROR_TABLE, report_error
from weightsurgery.cli.main import main
from weightsurgery.errors import WeightSurgeryError


def test_missing_file(cli, tmp_path: Path):
    result = cli("inspect", "missing.pth")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: checkpoint missing.pth does not exist; check the path")


def test_unsafe_pickle_is_refused_unless_opted_in(cli, tmp_path: Path):
    from cli_models import Payload

    torch.save({"w": torch.ones(2), "extra": Payload()}, tmp_path / "unsafe.pth")
    result = cli("inspect", "unsafe.pth")
    assert result.returncode == 1
    assert result.stderr.startswith("error: unsafe.pth is a pickle that needs code to load "
                                    "(it needs cli_models.Payload)")
    assert "--unsafe-pickle" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unsafe_pickle_loads_with_the_flag(tmp_path: Path, capsys):
    from cli_models import Payload

    torch.save({"w": torch.ones(2), "extra": Payload()}, tmp_path / "unsafe.pth")
    assert main(["inspect", str(tmp_path / "unsafe.pth"), "--unsafe-pickle", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"w"' in captured.out
    assert "warning: loading" in captured.err and "weights_only=False" in captured.err  # loud, even so


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("timm:resnet5000", "error: timm has no model 'resnet5000'; closest: resnet50"),
        ("torchvision:resnet", "error: torchvision has no model 'resnet'; closest: resnet"),
        ("cli_models:tiniest", "error: target 'cli_models:tiniest': 'cli_models' has no attribute 'tiniest'; "
                               "closest: Tiny"),
        ("no_such_pkg.models:net", "error: target 'no_such_pkg.models:net': module 'no_such_pkg.models' cannot be"),
        ("resnet50", "error: target 'resnet50' is not a factory spec; write it as 'timm:NAME', 'torchvision:NAME'"),
        ("cli_models:broken", "error: target 'cli_models:broken' failed to build: ZeroDivisionError"),
    ],
)
def test_unknown_target(nested_ckpt: Path, capsys, target: str, message: str):
    assert main(["plan", str(nested_ckpt), target]) == 1
    assert capsys.readouterr().err.startswith(message)


def test_argument_mistakes_exit_1_not_2(capsys):
    assert main(["transfer", "a.pth"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the following arguments are required: TARGET, -o/--output")
    assert "(see 'weightsurgery transfer --help')" in err
    assert main(["plan", "a.pth", "timm:resnet18", "--seed", "x"]) == 1
    assert "argument --seed: invalid int value: 'x'" in capsys.readouterr().err
    assert main(["plan", "a.pth", "timm:resnet18", "--num-classes", "3", "--kw", "num_classes=4"]) == 1
    assert "--num-classes 3 contradicts --kw num_classes=4" in capsys.readouterr().err


def test_debug_variable_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv("WEIGHTSURGERY_DEBUG", "1")
    assert main(["inspect", "missing.pth"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "SourceNotFoundError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: checkpoint missing.pth does not exist")


def test_error_table_maps_types_to_exit_codes():
    console = Console(record=True, width=200)
    assert report_error(WeightSurgeryError("bad thing; fix it"), console) == 1
    assert report_error(PermissionError(13, "Permission denied", "out.safetensors"), console) == 1
    assert report_error(KeyboardInterrupt(), console) == 130
    assert report_error(ZeroDivisionError("oops"), console) == 2
    text = console.export_text()
    assert "error: bad thing; fix it\n" in text
    assert "error: out.safetensors: Permission denied\n" in text
    assert "interrupted\n" in text
    assert "internal error: ZeroDivisionError: oops\nThis is a bug in weightsurgery; rerun with WEIGHTSURGERY_DEBUG=1" \
        in text
    assert ERROR_TABLE[-1].types == (KeyboardInterrupt,)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in err and "a bug" not in err
    return lines[0]


def test_a_file_of_meta_tensors_is_a_user_error_naming_it(tmp_path: Path, capsys):
    torch.save({"w": torch.empty(3, 3, device="meta")}, tmp_path / "meta.pth")
    expected = f"error: {tmp_path / 'meta.pth'}: tensor 'w' is stored on the meta device and holds no data"
    assert main(["convert", str(tmp_path / "meta.pth"), str(tmp_path / "out.safetensors")]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(expected)
    assert main(["diff", str(tmp_path / "meta.pth"), str(tmp_path / "meta.pth")]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(expected)
    assert main(["transfer", str(tmp_path / "meta.pth"), "torch.nn:Linear", "--kw", "in_features=3", "--kw",
                 "out_features=3", "--key-map", "weight", "w", "-o", str(tmp_path / "out.safetensors")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "'w'" in line and "meta.pth" in line and "on the meta device" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.pth"]


_UNDER_A_MEMORY_LIMIT = """\
import os, resource, sys
import weightsurgery.convert, weightsurgery.diff  # the libraries loaded before the limit: it is for the data
from weightsurgery.cli.main import main
used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, resource.RLIM_INFINITY))  # 256 MiB more, no further
sys.exit(main(sys.argv[1:]))
"""


def _sparse_safetensors(path: Path, numel: int) -> None:
    """A valid safetensors file holding one float32 tensor of ``numel`` zeros, sparse on disk."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, 4 * numel]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 4 * numel)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_an_allocation_the_machine_refuses_is_a_user_error_naming_the_file(tmp_path: Path):
    _sparse_safetensors(tmp_path / "big.safetensors", 2**28)  # 1 GiB of float32, four times what may be allocated
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "COLUMNS")}
    for argv in (["convert", "big.safetensors", "big.pth"], ["diff", "big.safetensors", "big.safetensors"]):
        result = subprocess.run([sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, *argv], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        line = _one_error_line(result.stderr)
        assert line.startswith("error: not enough memory to ") and "big.safetensors" in line
        assert "ulimit -v" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("../models:build", "error: target '../models:build': '../models' is not a module name; a TARGET names an "
                            "importable module (pkg.models:build_net), not a file: add its folder to PYTHONPATH"),
        ("os:system", "error: target 'os:system' is refused: it comes from Python's standard library (os)"),
        ("subprocess:getoutput", "error: target 'subprocess:getoutput' is refused: it comes from Python's standard"),
        ("torch.serialization:os.system", "error: target 'torch.serialization:os.system' is refused: it comes from "
                                          "Python's standard library (posix)"),
    ],
)
def test_a_target_that_is_a_path_or_from_the_standard_library_runs_nothing(nested_ckpt: Path, tmp_path: Path,
                                                                             capsys, target: str, message: str):
    marker = tmp_path / "ran"
    assert main(["plan", str(nested_ckpt), target, "--kw", f"command='touch {marker}'", "--kw", f"cmd='touch {marker}'"]
                ) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(message)
    assert not marker.exists()


def test_a_target_is_never_taken_from_a_recipe(nested_ckpt: Path, tmp_path: Path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"target": "os:system", "init": {"head.*": "zeros"}}))
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--recipe", str(recipe)]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: {recipe}: unknown recipe field(s) target")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "is not a weightsurgery plan (RecursionError"),
        (b"[1, 2]", "is not a weightsurgery plan (AttributeError"),
        (b'{"format": "weightsurgery.plan/1", "entries": 5}', "is not a weightsurgery plan (TypeError"),
        (b"\xff\xfe\x00 not text", "is not JSON text (invalid start byte at byte 0)"),
        (b"{nope", "plan is not valid JSON"),
    ],
)
def test_a_hostile_mapping_file_is_a_user_error_naming_it(nested_ckpt: Path, tmp_path: Path, capsys,
                                                          content: bytes, message: str):
    mapping = tmp_path / "mapping.json"
    mapping.write_bytes(content)
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--mapping", str(mapping)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: plan file {mapping}") and message in line


@pytest.mark.parametrize("name", ["deep.json", "deep.yaml", "binary.json"])
def test_a_hostile_recipe_file_is_a_user_error_naming_it(nested_ckpt: Path, tmp_path: Path, capsys, name: str):
    recipe = tmp_path / name
    recipe.write_bytes(b"\xff\xfe\x00" if name == "binary.json" else b"[" * 100_000 + b"]" * 100_000)
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--recipe", str(recipe)]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: {recipe}: not ")


@pytest.mark.parametrize("atol", ["-1", "nan"])
def test_a_negative_tolerance_is_a_command_line_mistake(nested_ckpt: Path, capsys, atol: str):
    assert main(["diff", str(nested_ckpt), str(nested_ckpt), "--atol", atol]) == 1
    assert _one_error_line(capsys.readouterr().err) == f"error: --atol {float(atol)} must be a number of 0 or more, " \
        "e.g. --atol 1e-6"


def _deep_pickle(path: Path) -> None:
    """3,000 nested dicts around one tensor: a real torch.save file (it needs a deeper stack to write)."""
    nested: dict = {"w": torch.ones(2)}
    for _ in range(3000):
        nested = {"x": nested}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        torch.save(nested, path)
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize("command", ["inspect", "convert", "diff", "plan"])
@pytest.mark.parametrize("source", ["deep.pth", "hf-hub:org/repo/../../x.safetensors"])
def test_a_hostile_source_is_a_user_error_naming_it(tmp_path: Path, monkeypatch, capsys, command: str, source: str):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the traversal is refused before any request
    _deep_pickle(tmp_path / "deep.pth")
    argv = {"inspect": [source], "convert": [source, "out.safetensors"], "diff": [source, source],
            "plan": [source, "cli_models:tiny"]}[command]
    assert main([command, *argv]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert source.removeprefix("hf-hub:").split("/")[-1] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.pth"]
