"""``weightsurgery transfer``: end to end through the real entry point, on real files."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weightsurgery.cli.main import main
from weightsurgery.match.plan import Plan


@pytest.mark.slow  # a real subprocess through the entry point
def test_transfer_writes_the_full_target_state_and_the_report(run_cli, tmp_path: Path, nested_ckpt: Path, source_model):
    result = run_cli(
        "transfer", str(nested_ckpt), "cli_models:tiny", "--num-classes", "3", "-o", "out.safetensors",
        "--report-json", "report.json", "--save-mapping", "mapping.json", "--init", "zeros", "--seed", "0",
    )
    assert result.returncode == 0, result.stderr
    out = load_file(tmp_path / "out.safetensors")
    src = source_model.state_dict()
    for key in ("body.weight", "body.bias", "norm.weight", "norm.running_mean", "norm.running_var"):
        assert torch.equal(out[key], src[key]), key
    assert out["head.weight"].shape == (3, 8) and not out["head.weight"].any()  # initialized by --init zeros
    assert set(out) == set(src)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mapping"]["body.weight"] == "model.body.weight"
    assert report["initialized"] == ["head.weight", "head.bias"]
    assert report["unused"] == ["model.head.weight", "model.head.bias"]
    assert Plan.load(tmp_path / "mapping.json").mapping["norm.running_var"] == "model.norm.running_var"
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as fh:
        assert fh.metadata()["weightsurgery.target"] == "cli_models:tiny"
    assert "loaded" in result.stdout and "initialized" in result.stdout
    assert "wrote out.safetensors" in result.stderr


def test_existing_output_is_refused_before_any_work(cli, tmp_path: Path, nested_ckpt: Path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    # The target does not exist: the error names the output, so the output was checked first.
    result = cli("transfer", str(nested_ckpt), "cli_models:no_such_factory", "-o", str(out))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: output {out} already exists; pass --force to replace it"]
    assert out.read_bytes() == b"old"


def test_force_replaces_and_mapping_reapplies(tmp_path: Path, nested_ckpt: Path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    mapping = tmp_path / "mapping.json"
    target = ["cli_models:tiny", "--kw", "num_classes=5"]
    assert main(["plan", str(nested_ckpt), *target, "--save-mapping", str(mapping), "-q"]) == 0
    code = main(["transfer", str(nested_ckpt), *target, "-o", str(out), "--force", "--mapping", str(mapping), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output"] == str(out)
    assert data["mapping"]["head.weight"] == "model.head.weight"  # same head size: everything loads
    assert set(load_file(out)) == {"body.weight", "body.bias", "norm.weight", "norm.bias", "norm.running_mean",
                                   "norm.running_var", "norm.num_batches_tracked", "head.weight", "head.bias"}


def test_tied_target_is_written_once_with_its_alias_recorded(tmp_path: Path, capsys):
    from cli_models import TiedLM

    torch.manual_seed(0)
    src = tmp_path / "lm.pth"
    torch.save(TiedLM().state_dict(), src)
    out = tmp_path / "lm.safetensors"
    assert main(["transfer", str(src), "cli_models:tied", "-o", str(out), "-q"]) == 0
    with safe_open(str(out), "pt") as fh:
        assert list(fh.keys()) == ["embed.weight"]
        assert fh.metadata()["head.weight"] == "embed.weight"
    assert capsys.readouterr().out == ""  # --quiet


def test_unsupported_output_suffix_is_a_cli_error(tmp_path: Path, nested_ckpt: Path, capsys):
    assert main(["transfer", str(nested_ckpt), "cli_models:tiny", "-o", str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert "the output is written as safetensors; name it like" in err and "out.safetensors" in err


def _limit_file_size() -> None:
    """In the child: cap files at 64 KiB, as a full disk would, so the 256 KiB output fails part-way.

    Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow  # a real subprocess under a file-size limit
def test_write_failing_part_way_keeps_the_old_output(run_cli, tmp_path: Path):
    from safetensors.torch import save_file

    from cli_models import wide

    src = tmp_path / "wide.safetensors"
    save_file(wide().state_dict(), src)  # 256 KiB, written here, before the limit applies
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the previous, complete output")
    result = run_cli("transfer", str(src), "cli_models:wide", "-o", str(out), "--force", preexec_fn=_limit_file_size)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: could not write {out} (")
    assert "File too large" in result.stderr and "it was left as it was" in result.stderr
    assert out.read_bytes() == b"the previous, complete output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "wide.safetensors"]  # no temp file left
