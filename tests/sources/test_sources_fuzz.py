"""Fuzz: mutated real .safetensors, .pth (zip and legacy) and index.json files, end to end through transfer.

Every input must end either in success, with each loaded tensor equal to what
an independent reader (safetensors' own loader, ``torch.load`` without a map,
or the untouched shards) finds in the file, or in a ``WeightSurgeryError``
naming the file, with the model bit-for-bit unchanged. Any other exception, a
wrong value or a touched model fails the test with the mutation that caused it
(hypothesis shrinks it). The mutations are byte-level (flip, set, truncate,
extend, insert, delete, copy a span elsewhere), aimed anywhere or at the
structure (a safetensors header, a zip's directory), plus structure-aware ones:
header fields changed or swapped, a pickle's bytes changed inside a well-formed
zip (so the unpickler, not the CRC, meets them), a record's data changed with a
valid CRC, an index's shard names and keys replaced.

``pytest tests/sources/test_sources_fuzz.py -s`` prints the count of each outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import WeightSurgeryError
from weightsurgery.sources.nested import unwrap

from torch_files import rezip

EXAMPLES = 520  # per kind; four kinds: over 2,000 mutated inputs


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.emb = nn.Embedding(5, 2)
        self.register_buffer("steps", torch.zeros(2, dtype=torch.int64))


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(4, 3, generator=g),
        "fc.bias": torch.randn(4, generator=g).half(),
        "emb.weight": torch.randn(5, 2, generator=g).bfloat16(),
        "steps": torch.tensor([3, 7]),
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real file of each kind, written by its own library."""
    d = tmp_path_factory.mktemp("fuzz-bases")
    sd = _state()
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    torch.save({"state_dict": sd, "epoch": 3}, d / "model.pth")
    torch.save({"model": sd}, d / "legacy.pth", _use_new_zipfile_serialization=False)
    keys = list(sd)
    save_file({k: sd[k] for k in keys[:2]}, d / "model-00001-of-00002.safetensors")
    save_file({k: sd[k] for k in keys[2:]}, d / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return {"safetensors": d / "model.safetensors", "zip": d / "model.pth", "legacy": d / "legacy.pth",
            "index": d / "model.safetensors.index.json"}  # fmt: skip


# --- mutations -----------------------------------------------------------------------------------

_frac = st.floats(0, 1, allow_nan=False)
_blob = st.binary(min_size=1, max_size=48)
BYTE_OPS = st.one_of(
    st.tuples(st.just("flip"), _frac, st.integers(0, 7)),
    st.tuples(st.just("set"), _frac, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _frac),
    st.tuples(st.just("extend"), _blob),
    st.tuples(st.just("insert"), _frac, _blob),
    st.tuples(st.just("delete"), _frac, st.integers(1, 64)),
    st.tuples(st.just("copy"), _frac, _frac, st.integers(1, 64)),
)
AIM = st.sampled_from(["anywhere", "structure"])


def mutate_bytes(data: bytes, op: tuple[Any, ...], span: tuple[int, int]) -> bytes:
    """Apply one byte-level mutation inside ``span`` (the whole file, or its structure bytes)."""
    lo, hi = span
    hi = max(hi, lo + 1)

    def at(frac: float) -> int:
        return min(lo + int(frac * (hi - lo)), len(data) - 1) if data else 0

    kind = op[0]
    if not data:
        return data + (op[-1] if kind in ("extend", "insert") else b"")
    if kind == "flip":
        i = at(op[1])
        return data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1 :]
    if kind == "set":
        i = at(op[1])
        return data[:i] + bytes([op[2]]) + data[i + 1 :]
    if kind == "truncate":
        return data[: at(op[1])]
    if kind == "extend":
        return data + op[1]
    if kind == "insert":
        i = at(op[1])
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = at(op[1])
        return data[:i] + data[i + op[2] :]
    src, dst = at(op[1]), at(op[2])
    return data[:dst] + data[src : src + op[3]] + data[dst + op[3] :]


def _structure_span(kind: str, data: bytes) -> tuple[int, int]:
    if kind == "safetensors" and len(data) >= 8:
        return 0, 8 + int.from_bytes(data[:8], "little")
    if kind == "zip":
        return max(0, len(data) - 1200), len(data)  # the central directory and its end record
    return 0, min(len(data), 400)


def _header_op(data: bytes, field: str, which: int, delta: int) -> bytes:
    """Change one field of a safetensors header, keeping the file otherwise as it was."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    entry = header[names[which % len(names)]]
    if field == "offset":
        entry["data_offsets"][delta % 2] += delta
    elif field == "shape":
        entry["shape"] = entry["shape"][:-1] + [entry["shape"][-1] + delta] if entry["shape"] else [delta]
    elif field == "dtype":
        entry["dtype"] = ["F32", "F16", "BF16", "I64", "U8", "F64", "BOOL", "X9"][delta % 8]
    elif field == "swap":
        other = header[names[(which + 1) % len(names)]]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    elif field == "length":
        return (n + delta).to_bytes(8, "little", signed=True) + data[8:] if n + delta >= 0 else data
    elif field == "metadata":
        header["__metadata__"] = [{"format": "pt"}, {"n": delta}, None, "x", {"fc.bias": "fc.weight"}][delta % 5]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


HEADER_OPS = st.tuples(
    st.just("header"), st.sampled_from(["offset", "shape", "dtype", "swap", "length", "metadata"]),
    st.integers(0, 3), st.integers(-9, 9),
)  # fmt: skip
PICKLE_OPS = st.tuples(st.just("pickle"), BYTE_OPS)  # bytes of data.pkl changed, zip rewritten around them
RECORD_OPS = st.tuples(st.just("record"), st.integers(0, 3), BYTE_OPS)  # a storage's bytes changed, CRC valid
INDEX_OPS = st.tuples(
    st.just("index"), st.sampled_from(["shard", "key", "drop", "type", "extra"]), st.integers(0, 3),
    st.sampled_from(["model-00002-of-00002.safetensors", "missing.safetensors", "../model.safetensors",
                     "/etc/passwd", "", "model.safetensors", "sub/../model-00001-of-00002.safetensors", 7]),
)  # fmt: skip


def mutate(kind: str, data: bytes, op: tuple[Any, ...], aim: str, workdir: Path) -> bytes:
    if op[0] == "header":
        try:
            return _header_op(data, *op[1:])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError):
            return data  # an earlier mutation left no header to edit
    if op[0] in ("pickle", "record"):
        return _zip_op(data, op, workdir)
    if op[0] == "index":
        return _index_op(data, *op[1:])
    span = _structure_span(kind, data) if aim == "structure" else (0, len(data))
    return mutate_bytes(data, op, span)


def _zip_op(data: bytes, op: tuple[Any, ...], workdir: Path) -> bytes:
    src, dst = workdir / "in.pth", workdir / "out.pth"
    src.write_bytes(data)
    try:
        with zipfile.ZipFile(src) as zf:
            names = [i.filename.split("/", 1)[1] for i in zf.infolist()]
            if op[0] == "pickle":
                name, inner = "data.pkl", op[1]
            else:
                records = sorted(n for n in names if n.startswith("data/"))
                name, inner = records[op[1] % len(records)], op[2]
            old = zf.read(next(i.filename for i in zf.infolist() if i.filename.endswith("/" + name)))
        return rezip(src, dst, {name: mutate_bytes(old, inner, (0, len(old)))}).read_bytes()
    except (zipfile.BadZipFile, StopIteration, ValueError, KeyError, IndexError, OSError, EOFError, NotImplementedError):
        return data  # an earlier mutation broke the zip: nothing to rewrite


def _index_op(data: bytes, field: str, which: int, value: object) -> bytes:
    try:
        index = json.loads(data)
        weight_map = index["weight_map"]
        key = sorted(weight_map)[which % len(weight_map)]
    except (ValueError, KeyError, TypeError, ZeroDivisionError, AttributeError):
        return data
    if field == "shard":
        weight_map[key] = value
    elif field == "key":
        weight_map[f"{key}{value}"] = weight_map.pop(key)
    elif field == "drop":
        del weight_map[key]
    elif field == "type":
        index["weight_map"] = [weight_map, None, "x", {key: [value]}][which]
    else:
        weight_map[f"extra.{which}"] = value
    return json.dumps(index).encode()


# --- the oracle ----------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    return {k: (v.detach().clone(), v.requires_grad) for k, v in model.state_dict(keep_vars=True).items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                                                                     b.view(-1).view(torch.uint8) if b.numel() else b)  # fmt: skip


def _reference(kind: str, path: Path, container: tuple[str, ...], bases: dict[str, Path]) -> dict[str, torch.Tensor]:
    """What an independent reader finds in the (mutated) file."""
    if kind == "safetensors":
        return load_file(path)
    if kind == "index":
        return {**load_file(bases["index"].parent / "model-00001-of-00002.safetensors"),
                **load_file(bases["index"].parent / "model-00002-of-00002.safetensors")}  # fmt: skip
    obj = torch.load(path, weights_only=True, mmap=False)
    return unwrap(obj, key=".".join(container) if container else None).tensors


def check(kind: str, path: Path, bases: dict[str, Path]) -> str:
    """Transfer the file into a fresh model; assert the outcome is one of the two allowed ones."""
    torch.manual_seed(0)
    model = Net()
    before = _snapshot(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = transfer(str(path), model)
    except WeightSurgeryError as exc:
        named = {path.name, *(p.name for p in path.parent.iterdir())} if kind == "index" else {path.name}
        assert any(name in str(exc) for name in named), f"the error names no file: {exc}"
        after = _snapshot(model)
        assert after.keys() == before.keys()
        for k, (t, grad) in before.items():
            assert _same(after[k][0], t) and after[k][1] == grad, f"{k} changed although the transfer failed: {exc}"
        if kind == "safetensors":  # what safetensors itself reads, this reader reads too
            try:
                load_file(path)
            except Exception:
                return "refused"
            raise AssertionError(f"refused a file safetensors loads: {exc}")
        return "refused"
    reference = _reference(kind, path, report.origin.container, bases)
    state = model.state_dict()
    for target, source in report.mapping.items():
        assert source in reference, f"{source} loaded, but the reference reader does not have it"
        assert _same(state[target], reference[source].to(state[target].dtype)), f"{target} <- {source}: wrong values"
    for k, (t, _) in before.items():
        if k not in report.mapping:
            assert _same(state[k], t), f"{k} was not loaded, yet it changed"
    return "loaded"


def _fuzz(kind: str, ops: st.SearchStrategy[Any], bases: dict[str, Path], tmp_path: Path) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    original = bases[kind].read_bytes()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):  # a memory file system: thousands of small writes are cheap there
        tmp_path = Path(tempfile.mkdtemp(dir=shm, prefix="weightsurgery-fuzz-"))
    target = tmp_path / bases[kind].name
    if kind == "index":  # mutate a copy of the index beside copies of its shards
        for shard in bases[kind].parent.glob("model-0000*"):
            (tmp_path / shard.name).write_bytes(shard.read_bytes())

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(st.tuples(ops, AIM), min_size=1, max_size=3))
    def run(program: list[tuple[tuple[Any, ...], str]]) -> None:
        data = original
        for op, aim in program:
            data = mutate(kind, data, op, aim, tmp_path)
        target.write_bytes(data)
        outcomes[check(kind, target, bases)] += 1

    try:
        run()
    finally:
        if tmp_path.parent == shm:
            shutil.rmtree(tmp_path, ignore_errors=True)
    print(f"fuzz {kind}: {sum(outcomes.values())} mutated inputs, {dict(outcomes)}")
    return outcomes


KINDS: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "safetensors": lambda: st.one_of(BYTE_OPS, HEADER_OPS),
    "zip": lambda: st.one_of(BYTE_OPS, PICKLE_OPS, RECORD_OPS),
    "legacy": lambda: BYTE_OPS,
    "index": lambda: st.one_of(BYTE_OPS, INDEX_OPS),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_mutated_file_loads_correctly_or_is_refused_naming_it(
    kind: str, bases: dict[str, Path], tmp_path: Path
) -> None:
    outcomes = _fuzz(kind, KINDS[kind](), bases, tmp_path)
    assert sum(outcomes.values()) >= EXAMPLES * 0.9
    assert outcomes["refused"] and outcomes["loaded"]  # both ends are reached: the mutations are not all fatal


def test_the_unmutated_bases_load_exactly(bases: dict[str, Path]) -> None:
    for kind, path in bases.items():
        assert check(kind, path, bases) == "loaded"
