"""Local files: safetensors (lazy), sharded indexes, torch pickles, folders, and bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from weightsurgery.errors import (
    AmbiguousContainerError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    SourceNotFoundError,
    UnknownContainerError,
    UnsafeCheckpointError,
)
from weightsurgery.sources import files, resolve, safetensors_file
from weightsurgery.sources.checkpoint import SourceKind, TensorMeta
from weightsurgery.sources.files import open_path


class TrainingConfig:
    """A custom class: pickling an instance makes a checkpoint that needs code to load."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


def _sd(value: float = 1.0, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        f"{prefix}conv.weight": torch.full((4, 3, 3, 3), value),
        f"{prefix}conv.bias": torch.full((4,), value, dtype=torch.float16),
        f"{prefix}fc.weight": torch.full((2, 4), value),
    }


def _open(path: Path, *, key: str | None = None, weights_only: bool = True) -> Any:
    return open_path(path, key=key, weights_only=weights_only)


def _shard(tmp_path: Path, index_name: str, suffix: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write ``_sd()`` as two shards beside an index, as Hugging Face does."""
    sd = _sd()
    parts = {f"model-0000{i}-of-00002{suffix}": dict(list(sd.items())[i - 1 :: 2]) for i in (1, 2)}
    for name, part in parts.items():
        if suffix == ".safetensors":
            save_file(part, tmp_path / name, metadata={"format": "pt"})
        else:
            torch.save(part, tmp_path / name)
    weight_map = {k: name for name, part in parts.items() for k in part}
    index = tmp_path / index_name
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index, sd


# --- safetensors -----------------------------------------------------------------------------


def test_safetensors_header_gives_keys_shapes_dtypes_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), path, metadata={"format": "pt", "arch": "tiny"})
    with _open(path) as ckpt:
        assert ckpt.origin.kind is SourceKind.SAFETENSORS
        assert ckpt.origin.location == str(path) and ckpt.origin.files == (str(path),)
        assert ckpt.metas["conv.bias"] == TensorMeta((4,), torch.float16)
        assert ckpt.metas["conv.weight"] == TensorMeta((4, 3, 3, 3), torch.float32)
        assert ckpt.metadata["safetensors"] == {"format": "pt", "arch": "tiny"}
        assert torch.equal(ckpt.load("fc.weight"), torch.ones(2, 4))


def test_safetensors_without_header_metadata_has_empty_metadata(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    assert _open(tmp_path / "w.safetensors").metadata["safetensors"] == {}


def test_safetensors_reads_no_tensor_data_until_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), path)
    reads: list[int] = []
    real = safetensors_file.os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(safetensors_file.os, "preadv", counting)
    ckpt = _open(path)
    assert ckpt.num_params == 4 * 27 + 4 + 8
    assert reads == []
    bias = ckpt.load("conv.bias")
    assert reads == [ckpt.metas["conv.bias"].nbytes]  # exactly the bytes of conv.bias, nothing else
    assert torch.equal(bias, _sd()["conv.bias"])
    assert ckpt.owned  # read into new memory, not a view of a mapped file


def test_safetensors_file_truncated_after_open_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), path)
    ckpt = _open(path)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 8)
    with pytest.raises(CorruptCheckpointError, match=r"ended while reading .* truncated or changed after it was opened"):
        for key in ckpt.keys():
            ckpt.load(key)


def test_safetensors_handle_stays_open_until_close(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    ckpt = _open(tmp_path / "w.safetensors")
    assert ckpt.load("w").item() == 1.0
    ckpt.close()
    with pytest.raises(ValueError, match=r"checkpoint safetensors .*w\.safetensors is closed"):
        ckpt.load("w")


def test_safetensors_key_selects_and_strips_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({**_sd(1.0, "model."), **_sd(2.0, "model_ema.")}, path)
    with _open(path, key="model_ema") as ckpt:
        assert sorted(ckpt.keys()) == ["conv.bias", "conv.weight", "fc.weight"]
        assert ckpt.origin.container == ("model_ema",)
        assert ckpt.origin.details["key_prefix"] == "model_ema."
        assert ckpt.load("fc.weight")[0, 0].item() == 2.0


def test_safetensors_unknown_key_prefix_lists_the_real_ones(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(prefix="model."), path)
    with pytest.raises(UnknownContainerError, match=r"key='ema' is not a key prefix in .*w\.safetensors.*: model\."):
        _open(path, key="ema")


def test_safetensors_is_sniffed_without_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    save_file({"w": torch.ones(2)}, path)
    assert _open(path).origin.kind is SourceKind.SAFETENSORS


# --- sharded ---------------------------------------------------------------------------------


def test_sharded_safetensors_reads_each_key_from_its_shard(tmp_path: Path) -> None:
    index, sd = _shard(tmp_path, "model.safetensors.index.json", ".safetensors")
    with _open(index) as ckpt:
        assert ckpt.origin.kind is SourceKind.SHARDED
        assert ckpt.origin.files == tuple(str(tmp_path / f"model-0000{i}-of-00002.safetensors") for i in (1, 2))
        assert sorted(ckpt.keys()) == sorted(sd)
        assert ckpt.metadata["index"] == {"total_size": 123}
        assert ckpt.metadata["safetensors"] == {"format": "pt"}
        for k, t in sd.items():
            assert torch.equal(ckpt.load(k), t)


def test_sharded_bin_reads_each_key_from_its_pickle_shard(tmp_path: Path) -> None:
    index, sd = _shard(tmp_path, "pytorch_model.bin.index.json", ".bin")
    with _open(index) as ckpt:
        assert ckpt.origin.kind is SourceKind.PICKLE
        assert len(ckpt.origin.files) == 2
        assert ckpt.keys() == ["conv.weight", "fc.weight", "conv.bias"]
        assert all(torch.equal(ckpt.load(k), t) for k, t in sd.items())


def test_sharded_with_a_missing_shard_names_it(tmp_path: Path) -> None:
    index, _ = _shard(tmp_path, "model.safetensors.index.json", ".safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceNotFoundError, match=r"names shards that are not in .*: model-00002-of-00002"):
        _open(index)


def test_sharded_index_naming_a_key_its_shard_lacks_is_corrupt(tmp_path: Path) -> None:
    index, _ = _shard(tmp_path, "model.safetensors.index.json", ".safetensors")
    data = json.loads(index.read_text())
    data["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpointError, match=r"extra\.weight \(in model-00001-of-00002\.safetensors\)"):
        _open(index)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"architectures": ["Bert"]})])
def test_json_that_is_not_a_shard_index_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(CorruptCheckpointError, match=r"config\.json is not (valid JSON|a shard index)"):
        _open(path)


# --- torch pickles ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".weights"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_pickles_in_both_formats(tmp_path: Path, suffix: str, zip_format: bool) -> None:
    path = tmp_path / f"w{suffix}"
    torch.save(_sd(), path, _use_new_zipfile_serialization=zip_format)
    ckpt = _open(path)
    assert ckpt.origin.kind is SourceKind.PICKLE
    assert ckpt.origin.files == (str(path),)
    assert ckpt.keys() == list(_sd())
    assert ckpt.metas["conv.bias"].dtype is torch.float16
    assert torch.equal(ckpt.load("conv.weight"), _sd()["conv.weight"])


def test_lightning_ckpt_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 2,
            "global_step": 40,
            "state_dict": _sd(prefix="model."),
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}],
            "lr_schedulers": [],
            "callbacks": {},
        },
        path,
    )
    ckpt = _open(path)
    assert ckpt.origin.container == ("state_dict",)
    assert ckpt.keys() == list(_sd(prefix="model."))
    assert ckpt.metadata["scalars"] == {"epoch": 2, "global_step": 40}
    assert ckpt.origin.describe() == f"torch-pickle {path} [state_dict]"


def test_pickle_ema_choice_and_key_override(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _sd(1.0), "state_dict_ema": _sd(2.0)}, path)
    assert _open(path).load("fc.weight")[0, 0].item() == 1.0
    ema = _open(path, key="state_dict_ema")
    assert ema.origin.container == ("state_dict_ema",)
    assert ema.load("fc.weight")[0, 0].item() == 2.0


def test_pickle_ambiguous_containers_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gan.pth"
    torch.save({"generator": _sd(), "discriminator": _sd()}, path)
    with pytest.raises(AmbiguousContainerError, match=r"gan\.pth holds several state dicts.*generator, discriminator"):
        _open(path)


def test_pickle_that_needs_code_is_refused_with_the_opt_in_named(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _sd(), "config": TrainingConfig(0.1)}, path)
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"unsafe\.pth is a pickle that needs code to load \(it needs \S*TrainingConfig\).*"
        r"Only if you trust this file, opt in with transfer\(\.\.\., weights_only=False\).*--unsafe-pickle",
    ) as info:
        _open(path)
    assert info.value.source == str(path)


def test_unsafe_opt_in_warns_naming_the_file_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _sd(), "config": TrainingConfig(0.1)}, path)
    with pytest.warns(UserWarning, match=r"unsafe\.pth with weights_only=False runs any code.*trust"):
        ckpt = _open(path, weights_only=False)
    assert ckpt.origin.container == ("state_dict",)
    assert ckpt.keys() == list(_sd())


def test_whole_pickled_module_loads_through_its_state_dict_when_opted_in(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(UnsafeCheckpointError):
        _open(path)
    with pytest.warns(UserWarning):
        assert _open(path, weights_only=False).keys() == ["weight", "bias"]


@pytest.mark.parametrize("content", [{"epoch": 3}, [torch.ones(1)]], ids=["no-tensors", "a-list"])
def test_pickle_without_a_state_dict_is_empty_not_corrupt(tmp_path: Path, content: object) -> None:
    path = tmp_path / "opt.pth"
    torch.save(content, path)
    with pytest.raises(EmptyCheckpointError, match=r"opt\.pth holds"):
        _open(path)


# --- corrupt, truncated, empty, missing ------------------------------------------------------


def _saved(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / {"safetensors": "w.safetensors", "zip": "w.pth", "legacy": "w.bin"}[kind]
    if kind == "safetensors":
        save_file(_sd(), path)
    else:
        torch.save(_sd(), path, _use_new_zipfile_serialization=kind == "zip")
    return path


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "tail-cut"])
def test_truncated_files_are_corrupt_at_open(tmp_path: Path, kind: str, keep: float) -> None:
    path = _saved(tmp_path, kind)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError, match=rf"{path.name} .*truncated or malformed.*re-download it"):
        _open(path)


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pth", "empty.ckpt"])
def test_empty_files_are_corrupt(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=rf"{name} (is empty|.*truncated or malformed)"):
        _open(tmp_path / name)


@pytest.mark.parametrize("name", ["noise.safetensors", "noise.pth", "noise.bin"])
def test_random_bytes_are_corrupt(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(random.Random(name).randbytes(4096))
    with pytest.raises(CorruptCheckpointError, match=rf"{name} .*re-download it or re-save it"):
        _open(tmp_path / name)


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope\.pth does not exist") as info:
        _open(tmp_path / "nope.pth")
    assert isinstance(info.value, FileNotFoundError)


# --- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"], "model.safetensors"),
        (["model.safetensors.index.json", "pytorch_model.bin"], "model.safetensors.index.json"),
        (["pytorch_model.bin", "pytorch_model.bin.index.json", "other.safetensors"], "pytorch_model.bin"),
        (["pytorch_model.bin.index.json", "other.safetensors"], "pytorch_model.bin.index.json"),
        (["weights.safetensors", "a.pth", "config.json"], "weights.safetensors"),
        (["best.ckpt", "config.json", "README.md"], "best.ckpt"),
    ],
)
def test_folder_priority(tmp_path: Path, present: list[str], expected: str) -> None:
    for name in present:
        (tmp_path / name).write_bytes(b"")
    assert files.choose_file(tmp_path).name == expected


def test_folder_opens_the_chosen_file_and_records_the_folder(tmp_path: Path) -> None:
    save_file(_sd(), tmp_path / "model.safetensors")
    torch.save({"other": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    with _open(tmp_path) as ckpt:
        assert ckpt.origin.kind is SourceKind.FOLDER
        assert ckpt.origin.location == str(tmp_path)
        assert ckpt.origin.files == (str(tmp_path / "model.safetensors"),)
        assert ckpt.origin.details == {"file": "model.safetensors", "format": "safetensors"}
        assert sorted(ckpt.keys()) == sorted(_sd())


def test_folder_with_an_index_and_its_shards_picks_the_index(tmp_path: Path) -> None:
    _shard(tmp_path, "diffusion_pytorch_model.safetensors.index.json", ".safetensors")
    with _open(tmp_path) as ckpt:
        assert ckpt.origin.details["file"] == "diffusion_pytorch_model.safetensors.index.json"
        assert ckpt.origin.details["format"] == "sharded-safetensors"
        assert len(ckpt.origin.files) == 2


def test_folder_with_unrelated_candidates_is_ambiguous(tmp_path: Path) -> None:
    for name in ("a.safetensors", "b.safetensors", "c.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(AmbiguousContainerError, match=r"a\.safetensors, b\.safetensors; pass the one you want") as info:
        _open(tmp_path)
    assert info.value.candidates == ("a.safetensors", "b.safetensors")


def test_folder_of_pickles_only_is_ambiguous_when_several(tmp_path: Path) -> None:
    for name in ("epoch1.ckpt", "epoch2.ckpt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(AmbiguousContainerError, match=r"epoch1\.ckpt, epoch2\.ckpt"):
        _open(tmp_path)


def test_folder_without_checkpoints_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceNotFoundError, match=r"holds no checkpoint file: looked for model\.safetensors"):
        _open(tmp_path)


def test_resolve_sends_paths_here(tmp_path: Path) -> None:
    torch.save({"model": _sd()}, tmp_path / "w.pth")
    ckpt = resolve(str(tmp_path / "w.pth"), key=None)
    assert ckpt.origin.container == ("model",)
