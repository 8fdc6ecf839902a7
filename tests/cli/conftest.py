"""Fixtures for the CLI tests: real checkpoint files and a runner for the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # in-process tests import the same factories the subprocess does
    sys.path.insert(0, str(HERE))

from cli_models import TinyNet  # noqa: E402

from weightsurgery.cli.main import main  # noqa: E402

Runner = Callable[..., subprocess.CompletedProcess]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: plain output, the test factories importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@pytest.fixture
def run_cli(tmp_path: Path) -> Runner:
    """Run ``python -m weightsurgery.cli.main ARGS`` in ``tmp_path``, with the test factories importable."""

    def run(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "weightsurgery.cli.main", *args],
            cwd=tmp_path,
            env=cli_env(env),
            capture_output=True,
            text=True,
            timeout=300,
            **kwargs,
        )

    return run


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable[..., Result]:
    """Run ``main(ARGS)`` in this process, in ``tmp_path``: the exit code and what it printed.

    What ``run_cli`` checks in a fresh interpreter, without one's start-up cost; the
    entry point itself keeps a few true subprocess tests (test_cli_main, test_cli_transfer).
    """

    def run(*args: str) -> Result:
        monkeypatch.chdir(tmp_path)
        for name in ("FORCE_COLOR", "NO_COLOR", "COLUMNS"):
            monkeypatch.delenv(name, raising=False)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.fixture
def source_model() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5)
    with torch.no_grad():  # non-default statistics, so that a copy is told from a fresh init
        model.norm.running_mean.uniform_()
        model.norm.running_var.uniform_(1, 2)
    return model


@pytest.fixture
def nested_ckpt(tmp_path: Path, source_model: TinyNet) -> Path:
    """A Lightning-style training checkpoint: ``{"state_dict": {"model.<key>": ...}, "epoch": 7}``."""
    path = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in source_model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7, "optimizer_states": []}, path)
    return path


class PausedCLI:
    """Real CLI subprocesses stopped right after they create an output's temporary file (``pause_at.py``)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.folder = cwd / "pause"
        self.folder.mkdir()
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, nth: int = 1) -> subprocess.Popen:
        env = cli_env({"PAUSE_DIR": str(self.folder), "PAUSE_NTH": str(nth)})
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "pause_at.py"), *args], cwd=self.cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, count: int = 1) -> list[Path]:
        """Wait until ``count`` runs are paused; return the temporary files they created."""
        deadline = time.monotonic() + 600
        while len(ready := sorted(self.folder.glob("ready.*"))) < count:
            exited = [p for p in self.procs if p.poll() is not None]
            assert not exited, f"a run ended before pausing: {exited[0].communicate()}"
            assert time.monotonic() < deadline, "the runs never reached the pause"
            time.sleep(0.02)
        return [Path(p.read_text()) for p in ready]

    def go(self) -> None:
        (self.folder / "go").touch()

    def finish(self, proc: subprocess.Popen) -> tuple[int, str]:
        """The exit code and stderr of a run."""
        _, err = proc.communicate(timeout=240)
        return proc.returncode, err


@pytest.fixture
def paused_cli(tmp_path: Path) -> Iterator[PausedCLI]:
    runs = PausedCLI(tmp_path)
    yield runs
    runs.go()
    for proc in runs.procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
