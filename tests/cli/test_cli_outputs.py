"""Outputs: never clobbered without --force, never half there, no temporary file left behind.

The faults are real: runs are real subprocesses, stopped right after they
create an output's temporary file (``pause_at.py``), while the test creates
the output, races four runs for one path, presses Ctrl-C or sends SIGKILL.
A file-size limit (``RLIMIT_FSIZE``) makes a write fail as a full disk would.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weightsurgery._io import STALE_AFTER, TEMP_PREFIX
from weightsurgery.cli.main import main


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TEMP_PREFIX}*"))


def _source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {"w": torch.randn(4, 3), "b": torch.arange(4.0)}
    torch.save(state, tmp_path / "in.pth")
    return tmp_path / "in.pth", state


def test_a_dangling_symlink_at_the_output_is_not_replaced(tmp_path: Path, nested_ckpt: Path, capsys):
    src, _ = _source(tmp_path)
    link = tmp_path / "out.safetensors"
    link.symlink_to(tmp_path / "nowhere")
    assert main(["convert", str(src), str(link)]) == 1
    assert main(["transfer", str(nested_ckpt), "cli_models:tiny", "-o", str(link)]) == 1
    refused = f"error: output {link} already exists; pass --force to replace it"
    assert capsys.readouterr().err.splitlines() == [refused] * 2
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere")
    assert _temps(tmp_path) == []


def test_a_file_created_at_the_output_during_the_run_is_kept(tmp_path: Path, paused_cli):
    src, _ = _source(tmp_path)
    out = tmp_path / "out.safetensors"
    proc = paused_cli.start("convert", str(src), str(out))
    tmp = paused_cli.wait_ready()[0]
    assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX)
    out.write_text("another program's file")  # after the early check, before the rename
    paused_cli.go()
    code, err = paused_cli.finish(proc)
    assert code == 1
    assert err.splitlines() == [
        f"error: output {out} appeared while this ran; it was left as it is and nothing was written. "
        "Pass overwrite=True (--force) to replace it"
    ]
    assert out.read_text() == "another program's file"
    assert _temps(tmp_path) == []


@pytest.mark.slow  # four interpreters importing torch at once
def test_four_concurrent_runs_to_one_new_path_one_wins(tmp_path: Path, paused_cli):
    src, state = _source(tmp_path)
    out = tmp_path / "out.safetensors"
    procs = [paused_cli.start("convert", str(src), str(out)) for _ in range(4)]
    assert len(set(paused_cli.wait_ready(4))) == 4  # all four passed the early check, each has its own temp file
    paused_cli.go()
    results = [paused_cli.finish(p) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1]
    for code, err in results:
        if code == 1:
            assert err.startswith(f"error: output {out} appeared while this ran; it was left as it is")
    loaded = load_file(out)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert _temps(tmp_path) == []


def test_ctrl_c_right_after_the_temp_file_is_created_leaves_nothing(tmp_path: Path, paused_cli):
    src, _ = _source(tmp_path)
    out = tmp_path / "out.pth"
    proc = paused_cli.start("convert", str(src), str(out))
    tmp = paused_cli.wait_ready()[0]
    assert tmp.exists()
    proc.send_signal(signal.SIGINT)
    code, err = paused_cli.finish(proc)
    assert (code, err) == (130, "interrupted\n")
    assert not out.exists() and not tmp.exists()
    assert _temps(tmp_path) == []


def test_a_killed_run_leaves_a_temp_file_that_a_later_run_removes_once_stale(tmp_path: Path, paused_cli, capsys):
    src, _ = _source(tmp_path)
    proc = paused_cli.start("convert", str(src), str(tmp_path / "out.pth"))
    tmp = paused_cli.wait_ready()[0]
    proc.send_signal(signal.SIGKILL)  # nothing can clean up after this
    assert paused_cli.finish(proc)[0] == -signal.SIGKILL
    assert tmp.exists()
    assert main(["convert", str(src), str(tmp_path / "a.safetensors")]) == 0
    assert tmp.exists()  # fresh: it may belong to a run still writing it
    old = time.time() - STALE_AFTER - 60
    os.utime(tmp, (old, old))
    assert main(["convert", str(src), str(tmp_path / "b.safetensors")]) == 0
    assert not tmp.exists()
    assert not (tmp_path / "out.pth").exists() and _temps(tmp_path) == []


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as a full disk reports ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_report_json_that_cannot_be_written_takes_the_output_with_it(tmp_path: Path, run_cli, monkeypatch):
    from cli_models import many_small

    torch.save(many_small().state_dict(), tmp_path / "src.pth")
    args = ["transfer", "src.pth", "cli_models:many_small", "-o", "out.safetensors", "--report-json", "report.json"]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--save-mapping", "plan.json", "-q"]) == 0  # the sizes, without a limit
    weights, report = (tmp_path / "out.safetensors").stat().st_size, (tmp_path / "report.json").stat().st_size
    assert weights * 2 < report  # a limit between the two: the weights fit, the report does not
    for name in ("out.safetensors", "report.json", "plan.json"):
        (tmp_path / name).unlink()
    result = run_cli(*args, "--save-mapping", "plan.json", preexec_fn=_limit_file_size((weights + report) // 2))
    assert result.returncode == 1
    assert result.stderr.startswith("error: could not write report.json (File too large); it was left as it was")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]  # neither file, no temp file


def test_report_json_appearing_during_the_run_leaves_no_output(tmp_path: Path, nested_ckpt: Path, paused_cli):
    out, report = tmp_path / "out.safetensors", tmp_path / "report.json"
    proc = paused_cli.start("transfer", str(nested_ckpt), "cli_models:tiny", "-o", str(out), "--report-json",
                            str(report), nth=2)  # paused once -o is written and the report's temp file exists
    assert paused_cli.wait_ready()[0].name.startswith(f"{TEMP_PREFIX}report.json.")
    report.write_text("{}")  # -o is placed first, then the report's rename is refused: -o is taken back
    paused_cli.go()
    code, err = paused_cli.finish(proc)
    assert code == 1 and err.startswith(f"error: output {report} appeared while this ran")
    assert not out.exists() and report.read_text() == "{}"
    assert _temps(tmp_path) == []


def test_force_replaces_every_output_together(tmp_path: Path, nested_ckpt: Path, capsys):
    out, report = tmp_path / "out.safetensors", tmp_path / "report.json"
    out.write_text("old weights")
    report.write_text("old report")
    assert main(["transfer", str(nested_ckpt), "cli_models:tiny", "-o", str(out), "--report-json", str(report),
                 "--force", "-q"]) == 0
    assert "body.weight" in load_file(out) and json.loads(report.read_text())["mapping"]
    assert _temps(tmp_path) == []


def test_a_missing_output_folder_is_refused_by_every_command_and_never_created(tmp_path: Path, nested_ckpt: Path,
                                                                               capsys):
    src, _ = _source(tmp_path)
    missing = tmp_path / "no" / "such"
    target = [str(nested_ckpt), "cli_models:tiny"]
    commands = [
        ["convert", str(src), str(missing / "out.safetensors")],
        ["transfer", *target, "-o", str(missing / "out.safetensors")],
        ["transfer", *target, "-o", str(tmp_path / "out.safetensors"), "--report-json", str(missing / "r.json")],
        ["transfer", *target, "-o", str(tmp_path / "out.safetensors"), "--save-mapping", str(missing / "m.json")],
        ["plan", *target, "--save-mapping", str(missing / "m.json")],
    ]
    for argv in commands:
        assert main(argv) == 1, argv
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot write ")
        assert lines[0].endswith(f"its folder {missing} does not exist; create it first (mkdir -p {missing})")
    assert not (tmp_path / "no").exists() and not (tmp_path / "out.safetensors").exists()


def test_an_output_that_is_a_folder_or_inside_a_file_is_refused(tmp_path: Path, capsys):
    src, _ = _source(tmp_path)
    (tmp_path / "folder.pth").mkdir()
    assert main(["convert", str(src), str(tmp_path / "folder.pth")]) == 1
    assert capsys.readouterr().err.startswith(f"error: output {tmp_path / 'folder.pth'} is a folder; give a file name")
    assert main(["convert", str(src), str(src / "out.pth")]) == 1
    assert capsys.readouterr().err.strip() == f"error: cannot write {src / 'out.pth'}: {src} is a file, not a folder"
