"""The entry point: ``python -m weightsurgery``, help, version, global flags, colour."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from weightsurgery.cli.main import COMMANDS, build_parser, main


def test_python_dash_m_weightsurgery_prints_the_version(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "weightsurgery", "--version"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0
    assert result.stdout.strip() == f"weightsurgery {version('weightsurgery')}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help_with_examples(command: str, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"weightsurgery {command} " in out


def test_no_command_lists_them(capsys):
    assert main([]) == 1
    assert "error: no command given; choose one of inspect, plan, transfer, diff, convert" in capsys.readouterr().err


def test_global_flags_go_before_or_after_the_command():
    before = build_parser().parse_args(["--json", "-q", "inspect", "x.pth"])
    after = build_parser().parse_args(["inspect", "x.pth", "--json", "-q"])
    neither = build_parser().parse_args(["inspect", "x.pth"])
    assert (before.json, before.quiet) == (after.json, after.quiet) == (True, True)
    assert (neither.json, neither.quiet) == (False, False)


def test_colour_only_when_forced_and_never_with_no_color(nested_ckpt: Path, monkeypatch, capsys):
    assert main(["inspect", str(nested_ckpt)]) == 0
    assert "\x1b[" not in capsys.readouterr().out  # not a terminal: plain text
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3"]) == 0
    assert "\x1b[32m" in capsys.readouterr().out  # "loaded" in green
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["plan", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "loaded" in out and "\x1b[32m" not in out and "\x1b[33m" not in out
