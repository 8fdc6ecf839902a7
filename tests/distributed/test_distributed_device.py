"""Sharded targets on a GPU mesh: staged shards stay on the host; commit streams each into its local shard.

Two halves, as for one process (``tests/apply/test_apply_device.py``):

* **Here, on any machine.** A rank's targets are DTensors on a ``cuda`` mesh
  whose local tensors are :class:`~torch._subclasses.fake_tensor.FakeTensor`\\ s
  (torch's metadata-only tensors), under torch's own fake process group: staging
  reads nothing but their layout, dtype and device. Every staged value must be
  a plain CPU tensor equal bit for bit to the rank's ``torch.chunk`` piece of the
  source, and CUDA is never touched: code that pins or moves a shard to its GPU
  at stage time raises here. Commit's side runs on a CPU mesh: a DTensor is
  written in place through its local tensor, a ``meta`` one replaced by a
  DTensor made from the staged shard, and both are undone bit for bit.
* **On a CUDA machine** (skipped without one): one rank under ``torchrun`` on a
  one-GPU mesh (``device_worker.py``), checked for peak device memory (no staged
  copy, no undo copy on the device), for equality with the same transfer on the
  CPU, and for a rollback that restores the GPU shards bit for bit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

from weightsurgery import transfer
from weightsurgery.apply.commit import Commit, commit
from weightsurgery.distributed.collectives import ShardSession
from weightsurgery.distributed.placement import placement_region
from weightsurgery.distributed.stage import Stager, local_init, placed
from weightsurgery.match.plan import Action
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources import resolve

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
HERE = Path(__file__).parent


@contextlib.contextmanager
def fake_world(rank: int, world: int) -> Iterator[None]:
    """Torch's fake process group: this process is ``rank`` of ``world``; no collective runs."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)  # 11 rows over 2 or 4 ranks: uneven pieces
        self.up = nn.Linear(6, 8)
        self.down = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)


def layout(key: str) -> list[Placement]:
    """FSDP2-like rows for most, a TP-like column split for one weight, replicas for the norm."""
    if key == "down.weight":
        return [Shard(1)]
    return [Replicate()] if key.startswith("norm") else [Shard(0)]


def expected_piece(full: torch.Tensor, placements: list[Placement], rank: int, world: int) -> torch.Tensor:
    """Torch's rule for a rank's piece (``torch.chunk``; past the last piece, an empty one), not ours."""
    (p,) = placements
    if isinstance(p, Replicate):
        return full
    pieces = torch.chunk(full, world, dim=p.dim)
    return pieces[rank] if rank < len(pieces) else full.narrow(p.dim, 0, 0)


def fake_cuda_targets(model: nn.Module, mesh: DeviceMesh) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` as a DTensor on the ``cuda`` mesh, its local tensor metadata only."""
    coordinate = mesh.get_coordinate()
    out = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        for key, value in model.state_dict().items():
            placements = layout(key)
            region = placement_region(tuple(value.shape), tuple(mesh.shape), coordinate, placements)
            local = torch.empty(region.local_shape, dtype=value.dtype, device="cuda")
            out[key] = DTensor.from_local(local, mesh, placements, run_check=False, shape=value.shape,
                                          stride=value.stride())
    return out


@pytest.mark.parametrize(("rank", "world"), [(0, 2), (1, 2), (3, 4)])
def test_a_gpu_mesh_rank_stages_its_shards_on_the_host_and_never_touches_cuda(tmp_path, rank: int, world: int) -> None:
    torch.manual_seed(0)
    model = Net()
    source = {k: (v.detach() * 3).to(torch.float16) for k, v in model.state_dict().items()}  # a cast to float32
    path = tmp_path / "w.safetensors"
    save_file(source, path)
    plan = transfer(path, Net(), dry_run=True, quiet=True).plan
    copies = [e for e in plan.entries.values() if e.action is Action.LOAD]
    assert {e.target for e in copies} == set(source)

    with fake_world(rank, world):
        mesh = DeviceMesh("cuda", list(range(world)), _init_backend=False)
        current = fake_cuda_targets(model, mesh)
        assert all(t.to_local().device.type == "cuda" for t in current.values())
        stager = Stager(ShardSession(None, timedelta(seconds=5)), resolve(path), current)
        modes = {e.target: stager.mode(e) for e in copies}
        assert set(modes.values()) == {"ranged"}
        staged, error = stager.stage_all(copies, modes, {}, None, len(copies))
        assert error is None, f"{type(error).__name__}: {error}"
        init = local_init(torch.arange(66.0).reshape(11, 6), current["embed.weight"])  # a leftover's full init

    assert staged.keys() == set(source)
    for key, value in staged.items():
        want = expected_piece(source[key].float(), layout(key), rank, world)
        assert type(value) is torch.Tensor and value.device == torch.device("cpu"), key
        assert value.dtype == torch.float32 and torch.equal(value, want), key
    assert torch.equal(init, torch.chunk(torch.arange(66.0).reshape(11, 6), world)[rank])
    assert type(init) is torch.Tensor and init.device == torch.device("cpu")
    assert stager.session.stats.bytes_read == sum(
        expected_piece(source[k], layout(k), rank, world).nbytes for k in source)
    assert not torch.cuda.is_initialized()


class Holder(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias, requires_grad=False)


def test_commit_writes_a_dtensor_through_its_local_shard_in_place_and_undoes_it() -> None:
    with fake_world(1, 2):
        mesh = DeviceMesh("cpu", [0, 1], _init_backend=False)
        local = torch.arange(12.0).reshape(3, 4)
        weight = nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=(6, 4),
                                                 stride=(4, 1)))
        storage = weight.to_local().untyped_storage().data_ptr()
        before = weight.to_local().detach().clone()
        value = torch.full((3, 4), 7.0)  # the staged local shard: a plain tensor
        tx = Commit()
        tx.write(weight, value)
        tx.finish()
        assert isinstance(weight, nn.Parameter) and isinstance(weight.data, DTensor)
        assert weight.to_local().untyped_storage().data_ptr() == storage  # in place
        assert torch.equal(weight.to_local(), value) and weight.placements == (Shard(0),)
        assert tx.rollback() == []
        assert torch.equal(weight.to_local(), before)


def test_commit_replaces_a_meta_dtensor_by_one_made_from_the_staged_shard_and_puts_it_back() -> None:
    with fake_world(0, 2):
        mesh = DeviceMesh("cpu", [0, 1], _init_backend=False)
        with torch.device("meta"):
            weight = DTensor.from_local(torch.empty(3, 4), mesh, [Shard(0)], run_check=False, shape=(6, 4),
                                        stride=(4, 1))
            bias = DTensor.from_local(torch.empty(6), mesh, [Replicate()], run_check=False, shape=(6,), stride=(1,))
        module = Holder(weight, bias)
        old = module.weight
        spec = TargetSpec.from_module(module)
        current = {"weight": module.weight, "bias": module.bias}
        staged = {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(6)}
        values = dict(staged)
        commit(module, spec, current, staged, place=placed)
        for key in ("weight", "bias"):
            now = getattr(module, key)
            assert isinstance(now, nn.Parameter) and isinstance(now.data, DTensor), key
            assert now.placements == current[key].placements and now.shape == current[key].shape, key
            assert now.to_local().device.type == "cpu" and torch.equal(now.to_local(), values[key]), key
        assert module.weight.requires_grad and not module.bias.requires_grad

        module = Holder(weight, bias)
        old = module.weight
        current = {"weight": module.weight, "bias": module.bias}

        def fail() -> None:
            raise RuntimeError("injected after the last write")

        with pytest.raises(RuntimeError, match="injected"):
            commit(module, spec, current, {"weight": torch.zeros(3, 4), "bias": torch.ones(6)}, place=placed,
                   after_tensors=fail)
        assert module.weight is old and module.weight.to_local().is_meta  # the very object put back


# ---------------------------------------------------------------- on a CUDA machine


@needs_cuda
@pytest.mark.slow
def test_a_one_gpu_mesh_transfer_holds_no_staged_or_undo_copy_on_the_device(tmp_path) -> None:
    from launch import torchrun

    from device_worker import reference_setup

    config = reference_setup(tmp_path)
    status, log, _ = torchrun(1, HERE / "device_worker.py", config, timeout=300)
    assert status == 0, log[-4000:]
    results = {case: json.loads((tmp_path / f"{case}.json").read_text()) for case in ("real", "meta", "fault")}
    for case, r in results.items():
        assert "exception" not in r, f"{case}: {r.get('exception')}"
        assert r["on_cuda"], f"{case}: a shard is not on the GPU: {r['on_cuda_not']}"
    real, meta, fault = results["real"], results["meta"], results["fault"]
    assert real["wrong"] == [] and meta["wrong"] == [], (real["wrong"], meta["wrong"])
    assert real["peak"] <= real["largest"] + real["slack"], \
        f"{real['peak']} bytes above the model; its largest tensor has {real['largest']} (all: {real['total']})"
    assert meta["peak"] <= meta["total"] + meta["largest"] + meta["slack"], meta
    assert meta["inv_freq_on_cuda"] and meta["inv_freq_equal"]
    assert fault["error"] == "ShardedTransferError" and fault["phase"] == "commit", fault
    assert fault["changed"] == [], f"the rollback left these shards changed: {fault['changed']}"
    assert fault["peak"] <= fault["largest"] + fault["slack"], "the undo copies are on the device"
