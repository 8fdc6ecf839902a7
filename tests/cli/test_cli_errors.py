"""User mistakes exit 1 with one ``error:`` line naming the file or key and the fix."""

from __future__ import annotations

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
