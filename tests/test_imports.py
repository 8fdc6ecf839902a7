"""Start-up stays light: every CLI call and script pays for what it imports.

Each check runs in a fresh interpreter and looks at ``sys.modules`` (or at
``-X importtime``'s list of every module imported): these tests are about
laziness, not timings (benchmarks/bench_startup.py measures the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: imported only when a source, target, recipe or the CLI's rendering calls for them.
HEAVY = ("timm", "torchvision", "huggingface_hub", "transformers", "peft", "rich", "yaml", "safetensors.torch")


def _loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {watch!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _imported_by(*args: str) -> set[str]:
    """Every module a real ``python -X importtime ARGS`` process imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}


def test_import_weightsurgery_imports_no_torch() -> None:
    assert _loaded_after("import weightsurgery", ("torch", *HEAVY)) == []


def test_the_whole_public_api_pulls_in_no_optional_library() -> None:
    code = "import weightsurgery\nfor name in weightsurgery.__all__: getattr(weightsurgery, name)"
    assert _loaded_after(code, HEAVY) == []


def test_a_submodule_import_does_not_hide_the_function_of_the_same_name() -> None:
    import weightsurgery
    import weightsurgery.transfer  # noqa: F401  (binds the submodule on the package)

    assert callable(weightsurgery.transfer)
    assert weightsurgery.transfer is sys.modules["weightsurgery.transfer"].transfer


def test_help_of_the_entry_point_and_of_every_command_imports_no_torch() -> None:
    assert "torch" not in _imported_by("-m", "weightsurgery", "--help")
    from weightsurgery.cli.main import COMMANDS

    code = "\n".join([
        "import contextlib, io, json, sys",
        "from weightsurgery.cli.main import main",
        "seen = {}",
        f"for cmd in {list(COMMANDS)!r}:",
        "    with contextlib.redirect_stdout(io.StringIO()) as out:",
        "        assert main([cmd, '--help']) == 0 and 'usage:' in out.getvalue()",
        "    seen[cmd] = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]",
        "print(json.dumps(seen))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {cmd: [] for cmd in COMMANDS}


def test_inspect_of_a_safetensors_file_imports_neither_timm_nor_torchvision(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, str(path))
    imported = _imported_by("-m", "weightsurgery", "inspect", str(path))
    assert "weightsurgery.sources.safetensors_file" in imported  # the file was really read
    assert not imported & {"timm", "torchvision", "huggingface_hub", "transformers"}
