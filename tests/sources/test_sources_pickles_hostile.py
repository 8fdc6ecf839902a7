"""Torch pickles that lie, rot, shrink or attack: each ends in an error naming the file, never a crash."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources import resolve

from torch_files import data_offset, rezip

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def declare_numel(pkl: bytes, numel: int) -> bytes:
    """The pickle of one 1-d tensor, with its storage's element count and the tensor's size both set to ``numel``."""
    ops = list(pickletools.genops(pkl))
    persid = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    count = next(j for j in range(persid, -1, -1) if ops[j][0].name.startswith("BININT"))
    size = [j for j in range(persid, len(ops)) if ops[j][0].name.startswith("BININT")][1]  # after the offset
    for i in (size, count):  # the later one first: each patch shifts what follows
        pkl = pkl[: ops[i][2]] + b"J" + numel.to_bytes(4, "little") + pkl[ops[i + 1][2] :]
    return pkl


def _linear_file(tmp_path: Path, name: str = "w.pth") -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {"weight": torch.arange(64.0 * 64).reshape(64, 64), "bias": torch.arange(64.0)}
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- a storage declared larger than its record -----------------------------------------------


def test_a_storage_declared_larger_than_its_record_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.pth"
    torch.save({"w": torch.arange(4.0)}, src)
    with zipfile.ZipFile(src) as zf:
        pkl = zf.read("src/data.pkl")
    bad = rezip(src, tmp_path / "liar.pth", {"data.pkl": declare_numel(pkl, 64)})
    # the fault is real: torch's mmap=True load takes it, and the weight reads the zip's own headers
    assert torch.load(bad, mmap=True, weights_only=True)["w"].shape == (64,)
    with open(bad, "rb") as fh:
        fh.seek(data_offset(bad, "data/0") + 16)
        assert b"PK" in fh.read(240)
    with pytest.raises(
        CorruptCheckpointError,
        match=r"liar\.pth is not a readable torch checkpoint: .*storage '0' declares 64 x torch\.float32 = 256 "
        r"bytes but its record src/data/0 holds 16",
    ) as info:
        resolve(str(bad))
    assert info.value.source == str(bad)


def test_a_pickle_naming_a_storage_without_a_record_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.pth"
    torch.save({"w": torch.arange(4.0)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "gone.pth", "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("data/0"):
                zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(CorruptCheckpointError, match=r"gone\.pth .*names storage '0', which has no record data/0"):
        resolve(str(tmp_path / "gone.pth"))


# --- a flipped byte: CRC-32 --------------------------------------------------------------------


def test_a_flipped_byte_in_a_record_fails_its_crc_and_the_model_is_unchanged(tmp_path: Path) -> None:
    path, sd = _linear_file(tmp_path)
    at = data_offset(path, "data/0") + 1000
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["weight"], sd["weight"])  # torch loads it silently
    model = nn.Linear(64, 64)
    before = _model_state(model)
    with pytest.raises(CorruptCheckpointError, match=r"w\.pth: record w/data/0 fails its CRC-32 check .*re-download"):
        transfer(str(path), model)
    _assert_unchanged(model, before)


def test_an_intact_file_loads_the_same_values_lazily(tmp_path: Path) -> None:
    sd = {"a": torch.arange(6.0).reshape(2, 3), "half": torch.ones(3, dtype=torch.float16)}
    sd["row"] = sd["a"][1]  # a view of another tensor's storage
    sd["tied"] = sd["a"]
    torch.save(sd, tmp_path / "v.pth")
    with resolve(str(tmp_path / "v.pth")) as ckpt:
        assert ckpt.owned and ckpt.metadata["tied"] == [["a", "tied"]]
        loaded = {k: ckpt.load(k) for k in ckpt.keys()}
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in sd.items())
    assert loaded["a"].untyped_storage().data_ptr() != loaded["tied"].untyped_storage().data_ptr()  # each owns its memory


# --- truncated between resolve and apply: an error, never SIGBUS -------------------------------

_CHILD = """
import os, sys, torch
from torch import nn
from weightsurgery import transfer
from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources import resolve
path, mode = sys.argv[1], sys.argv[2]
if mode == "torch-mmap":
    sd = torch.load(path, mmap=True, weights_only=True)
    os.truncate(path, 2048)
    print(float(sd["weight"].sum()))
else:
    ckpt = resolve(path)
    os.truncate(path, 2048)
    model = nn.Linear(64, 64)
    before = model.weight.detach().clone()
    try:
        transfer(ckpt, model)
    except CorruptCheckpointError as exc:
        print("refused", torch.equal(model.weight, before), exc)
"""


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("mode", ["torch-mmap", "weightsurgery"])
def test_a_pth_truncated_between_resolve_and_apply(tmp_path: Path, mode: str) -> None:
    path, _ = _linear_file(tmp_path)
    child = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True)
    if mode == "torch-mmap":  # the fault is real: a mapped read past the new end of the file kills the process
        assert child.returncode == -signal.SIGBUS, (child.returncode, child.stderr[-2000:])
    else:
        assert child.returncode == 0, child.stderr[-2000:]
        assert child.stdout.startswith("refused True"), child.stdout
        assert f"{path} ended while reading w/data/" in child.stdout and "truncated or changed after" in child.stdout


# --- hostile containers --------------------------------------------------------------------------


def _zip_with_pickle(tmp_path: Path, name: str, pkl: bytes) -> Path:
    src = tmp_path / "base.pth"
    torch.save({"w": torch.ones(1)}, src)
    return rezip(src, tmp_path / name, {"data.pkl": pkl})


def _legacy_with_pickle(tmp_path: Path, name: str, pkl: bytes) -> Path:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, sys_info))
    path = tmp_path / name
    path.write_bytes(head + pkl + pickle.dumps([], protocol=2))
    return path


def test_3000_nested_dicts_are_refused_not_a_recursion_error(tmp_path: Path) -> None:
    pkl = b"\x80\x02" + b"}X\x01\x00\x00\x00a" * 3000 + b"}" + b"s" * 3000 + b"."
    path = _zip_with_pickle(tmp_path, "deep.pth", pkl)
    model = nn.Linear(2, 2)
    before = _model_state(model)
    with pytest.raises(CorruptCheckpointError, match=r"deep\.pth nests mappings more than 100 levels deep"):
        transfer(str(path), model)
    _assert_unchanged(model, before)


BOMBS = {
    "bytearray": b"c__builtin__\nbytearray\n\x8a\x05" + pickle.encode_long(10**11) + b"\x85R.",
    "FloatTensor": b"ctorch\nFloatTensor\nJ\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86R.",
    "UntypedStorage": b"ctorch.storage\nUntypedStorage\n\x8a\x05" + pickle.encode_long(10**11) + b"\x85R.",
    "memoized": b"]c__builtin__\nbytearray\nq\x01ah\x01\x8a\x05" + pickle.encode_long(10**11) + b"\x85R.",
}


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_tiny_pickle_asking_for_gigabytes_is_refused_before_it_runs(tmp_path: Path, bomb: str, container: str) -> None:
    pkl = b"\x80\x02" + BOMBS[bomb]
    assert len(pkl) < 50
    make = _zip_with_pickle if container == "zip" else _legacy_with_pickle
    path = make(tmp_path, f"{bomb}.pth", pkl)
    with pytest.raises(CorruptCheckpointError, match=rf"{bomb}\.pth is not a checkpoint torch\.save wrote: its pickle "
                       r"calls \S+\((100000000000|100000, 100000)\), an allocation of"):  # fmt: skip
        resolve(str(path))


@pytest.mark.slow  # a fresh interpreter
def test_the_bytearray_bomb_is_real_under_plain_torch_load(tmp_path: Path) -> None:
    path = _zip_with_pickle(tmp_path, "bomb.pth", b"\x80\x02" + BOMBS["bytearray"])
    code = textwrap.dedent(f"""
        import resource, torch
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        try:
            torch.load({str(path)!r}, weights_only=True)
        except MemoryError:
            print("MemoryError")
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "MemoryError", child.stderr[-2000:]


# --- a shard that is a symlink out of its folder ---------------------------------------------------


def _index(folder: Path, weight_map: dict[str, str]) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    return index


def test_a_shard_symlinked_outside_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "model").mkdir()
    save_file({"secret": torch.ones(2)}, tmp_path / "elsewhere" / "secret.safetensors")
    (tmp_path / "model" / "model-1.safetensors").symlink_to(tmp_path / "elsewhere" / "secret.safetensors")
    index = _index(tmp_path / "model", {"secret": "model-1.safetensors"})
    with pytest.raises(CorruptCheckpointError, match=r"names shards that resolve outside its folder .*model-1\.safe"
                       r"tensors -> .*elsewhere/secret\.safetensors"):  # fmt: skip
        resolve(str(index))


def test_a_hub_cache_snapshot_of_symlinks_into_blobs_still_opens(tmp_path: Path) -> None:
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, blobs / "f00d")
    _index(blobs, {"w": "model-1.safetensors"}).rename(blobs / "beef")
    (snapshot / "model-1.safetensors").symlink_to("../../blobs/f00d")
    (snapshot / "model.safetensors.index.json").symlink_to("../../blobs/beef")
    with resolve(str(snapshot / "model.safetensors.index.json")) as ckpt:
        assert ckpt.load("w").tolist() == [1.0, 1.0]


def test_shard_index_over_the_size_limit_or_with_odd_names_is_refused(tmp_path: Path, monkeypatch) -> None:
    from weightsurgery.sources import sharded

    for name in ("", ".", "a\0b"):
        index = _index(tmp_path, {"w": name})
        with pytest.raises(CorruptCheckpointError, match=r"names shards outside its folder"):
            resolve(str(index))
    monkeypatch.setattr(sharded, "MAX_INDEX_BYTES", 10)
    with pytest.raises(CorruptCheckpointError, match=r"index\.json is \d+ bytes, over the 10-byte limit"):
        resolve(str(_index(tmp_path, {"w": "m.safetensors"})))


def test_tensors_inside_a_pickled_extra_state_are_read_from_the_file(tmp_path: Path) -> None:
    torch.save({"norm.weight": torch.ones(2), "norm._extra_state": (torch.full((3,), 2.0), [torch.ones(1)], "fp8")},
               tmp_path / "x.pth")  # fmt: skip
    with resolve(str(tmp_path / "x.pth")) as ckpt:
        amax, more, tag = ckpt.metadata["extra_state"]["norm._extra_state"]
        assert amax.tolist() == [2.0, 2.0, 2.0] and more[0].tolist() == [1.0] and tag == "fp8"
