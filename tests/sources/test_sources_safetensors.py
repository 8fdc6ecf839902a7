"""The safetensors reader: its own header parse (no mmap), validated offsets, range reads."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources import resolve, safetensors_file
from weightsurgery.sources.safetensors_file import MAX_HEADER_BYTES, open_header


def write_raw(path: Path, header: dict[str, Any], data: bytes, *, length: int | None = None) -> Path:
    """A safetensors file from a header written by hand (no library check on the way)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _f32(name: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}}


HOSTILE = {
    "overlap": ({**_f32("a", [2], 0, 8), **_f32("b", [2], 4, 12)}, 12, r"'b' at bytes \[4, 12\) overlaps"),
    "gap": ({**_f32("a", [1], 0, 4), **_f32("b", [1], 8, 12)}, 12, r"'b' .* leaves a gap of 4 bytes"),
    "out-of-range": (_f32("a", [4], 0, 16), 8, r"'a' ends at byte 16 of a 8-byte data area"),
    "shape-vs-bytes": (_f32("a", [3], 0, 8), 8, r"'a' of shape \(3,\) and dtype F32 needs 12 bytes but .* hold 8"),
    "trailing-bytes": (_f32("a", [1], 0, 4), 8, r"tensors fill 4 bytes of a 8-byte data area"),
    "negative-shape": (_f32("a", [-1], 0, 4), 4, r"'a' has shape \[-1\], not a list of sizes"),
    "reversed-offsets": (_f32("a", [0], 4, 0), 4, r"'a' has data_offsets \[4, 0\]"),
    "no-dtype": ({"a": {"shape": [1], "data_offsets": [0, 4]}}, 4, r"'a' lacks dtype, shape or data_offsets"),
    "metadata-not-strings": ({"__metadata__": {"n": 3}, **_f32("a", [1], 0, 4)}, 4, r"__metadata__ is not an object"),
    "not-an-object": ([1, 2], 0, r"header is not a JSON object"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_inconsistent_headers_are_refused_naming_the_file_and_tensor(tmp_path: Path, case: str) -> None:
    header, size, message = HOSTILE[case]
    path = write_raw(tmp_path / f"{case}.safetensors", header, bytes(size))
    with pytest.raises(CorruptCheckpointError, match=rf"{case}\.safetensors is not a readable .*{message}") as info:
        resolve(str(path))
    assert info.value.source == str(path)


def test_duplicate_keys_and_unknown_dtypes_are_refused(tmp_path: Path) -> None:
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
          b'"data_offsets": [0, 4]}}'  # fmt: skip
    dup = tmp_path / "dup.safetensors"
    dup.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CorruptCheckpointError, match=r"dup\.safetensors .*duplicate key 'a'"):
        resolve(str(dup))
    odd = write_raw(tmp_path / "odd.safetensors", {"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(CorruptCheckpointError, match=r"odd\.safetensors stores 'a' as dtype F7, which this torch"):
        resolve(str(odd))


@pytest.mark.parametrize(
    ("length", "message"),
    [(MAX_HEADER_BYTES + 1, r"claims 100000001 bytes, over the 100000000-byte limit"), (10**6, r"claims 1000000 bytes but")],
    ids=["over-limit", "past-the-end"],
)
def test_header_length_is_bounded_by_the_limit_and_the_file(tmp_path: Path, length: int, message: str) -> None:
    path = write_raw(tmp_path / "long.safetensors", _f32("a", [1], 0, 4), bytes(4), length=length)
    with pytest.raises(CorruptCheckpointError, match=rf"long\.safetensors .*{message}"):
        resolve(str(path))


def test_every_dtype_of_the_table_round_trips_through_safetensors(tmp_path: Path) -> None:
    tensors = {name: torch.arange(6).reshape(2, 3).to(dtype) for name, dtype in safetensors_file.DTYPES.items()
               if name not in ("C128",)}  # fmt: skip
    save_file(tensors, tmp_path / "all.safetensors")
    header = open_header(tmp_path / "all.safetensors")
    for name, t in tensors.items():
        got = header.read(name)
        assert got.dtype == t.dtype and torch.equal(got.view(torch.uint8), t.view(torch.uint8)), name
    header.close()


def test_read_rows_reads_only_the_rows_asked_for(tmp_path: Path) -> None:
    w = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    save_file({"w": w, "b": torch.ones(3)}, tmp_path / "w.safetensors")
    header = open_header(tmp_path / "w.safetensors")
    assert header.bytes_read == 0
    assert torch.equal(header.read_rows("w", 3, 7), w[3:7])
    assert header.bytes_read == 4 * 4 * 4
    assert torch.equal(header.read_rows("w", 5, 5), w[5:5])
    out = torch.empty(3, dtype=torch.float32)
    assert torch.equal(header.read_into("w", out, 4 * 9), w.reshape(-1)[9:12])
    assert header.bytes_read == 4 * 4 * 4 + 12
    with pytest.raises(IndexError, match=r"rows \[8, 11\) are out of range for 'w' of shape \(10, 4\)"):
        header.read_rows("w", 8, 11)
    with pytest.raises(ValueError, match=r"bytes \[156, 168\) of 'w' are not a range of it"):
        header.read_into("w", out, 4 * 39)
    header.close()


def test_reading_safetensors_does_not_import_safetensors_torch(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "w.safetensors", _f32("w", [2], 0, 8), struct.pack("<2f", 1, 2))
    code = ("import sys, weightsurgery; from weightsurgery.sources import resolve; "
            f"assert resolve({str(path)!r}).load('w').tolist() == [1.0, 2.0]; print('safetensors.torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.strip().splitlines()[-1] == "False"


BIG = 30 << 30
LIMIT = 16 << 30  # address space of the child: less than the file, so mapping the whole file fails


def _sparse_30gib(path: Path) -> None:
    """A valid 30 GiB safetensors file that occupies a few KB on disk: a small tensor, then one huge one."""
    n = 256
    small = 4 * 6
    big = (BIG - 8 - n - small) // 2
    header = {
        "small": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, small]},
        "big": {"dtype": "F16", "shape": [big], "data_offsets": [small, small + 2 * big]},
    }
    raw = json.dumps(header).encode().ljust(n)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + raw + struct.pack("<6f", *range(6)))
        fh.truncate(BIG)


def _run_limited(body: str, path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
        path = {str(path)!r}
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())


def test_a_30_gib_sparse_file_opens_with_less_address_space_than_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    _sparse_30gib(path)
    assert path.stat().st_size == BIG and path.stat().st_blocks * 512 < 1 << 20
    ours = _run_limited(
        """
        from weightsurgery.sources import resolve
        ckpt = resolve(path)
        print(ckpt.load("small").tolist(), ckpt.metas["big"].nbytes > 29 << 30)
        """,
        path,
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip().splitlines()[-1] == "[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] True"
    mapped = _run_limited(  # the control: a reader that maps the file cannot open it under the same limit
        """
        from safetensors import safe_open
        try:
            safe_open(path, framework="pt")
        except Exception as exc:
            print("refused", type(exc).__name__)
        """,
        path,
    )
    assert mapped.stdout.strip().splitlines()[-1].startswith("refused"), (mapped.stdout, mapped.stderr)


def test_a_checkpoint_locates_each_key_in_its_open_file_for_range_reads(tmp_path: Path) -> None:
    w = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    save_file({"model.w": w, "model.b": torch.ones(3)}, tmp_path / "one.safetensors")
    with resolve(str(tmp_path / "one.safetensors"), key="model") as ckpt:
        header, stored = ckpt.locate("w")
        assert stored == "model.w" and header.read_rows(stored, 2, 4).tolist() == w[2:4].tolist()
        assert header.bytes_read == 2 * 4 * 4
    save_file({"a": w}, tmp_path / "s-1.safetensors")
    torch.save({"b": torch.ones(2)}, tmp_path / "s-2.bin")
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s-1.safetensors", "b": "s-2.bin"}}))
    with resolve(str(index)) as ckpt:
        header, stored = ckpt.locate("a")
        assert header.path == tmp_path / "s-1.safetensors" and stored == "a"
        assert ckpt.locate("b") is None  # a pickle shard: no range reads
    assert resolve({"w": w}).locate("w") is None
