"""Placement math and region mapping, on one process: no ranks needed, the oracle is torch's own."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import save_file
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

from weightsurgery.distributed.placement import Region, full_region, placement_region
from weightsurgery.distributed.regions import assemble, source_regions
from weightsurgery.match.plan import Action, PlanEntry


def _chunked(full: torch.Tensor, mesh: tuple[int, ...], coord: tuple[int, ...], placements) -> torch.Tensor:
    """What DTensor puts on the rank at ``coord``: ``torch.chunk`` per mesh dim, left to right."""
    out = full
    for n, c, p in zip(mesh, coord, placements):
        if isinstance(p, Shard):
            chunks = torch.chunk(out, n, dim=p.dim)
            out = chunks[c] if c < len(chunks) else out.narrow(p.dim, 0, 0)
    return out


CASES = [
    ((7, 5), (2,), [Shard(0)]),
    ((50, 16), (4,), [Shard(0)]),           # 13, 13, 13, 11 rows
    ((3, 4), (4,), [Shard(0)]),             # the last rank holds nothing
    ((6, 10), (4,), [Shard(1)]),
    ((9, 10), (2, 2), [Shard(0), Shard(1)]),
    ((9, 4), (2, 2), [Shard(0), Shard(0)]),  # two mesh dims nest on one tensor dim
    ((5, 3, 4), (2, 2), [Replicate(), Shard(2)]),
    ((4,), (3,), [Replicate()]),
]


@pytest.mark.parametrize(("shape", "mesh", "placements"), CASES)
def test_region_is_what_torch_chunk_gives_every_rank(shape, mesh, placements) -> None:
    full = torch.arange(math.prod(shape)).reshape(shape)
    for coord in itertools.product(*(range(n) for n in mesh)):
        region = placement_region(shape, mesh, coord, placements)
        expected = _chunked(full, mesh, coord, placements)
        assert torch.equal(region.take(full), expected), (coord, region)
        local, offset = _compute_local_shape_and_global_offset(shape, mesh, list(coord), placements)
        assert region.local_shape == tuple(local)
        assert all(len(i) == 0 or i[0] == o for i, o in zip(region.index, offset))


@pytest.mark.parametrize(("shape", "mesh", "placements"), CASES)
def test_byte_runs_read_exactly_the_region(shape, mesh, placements, tmp_path) -> None:
    full = torch.randn(shape)
    raw = full.reshape(-1).view(torch.uint8)
    for coord in itertools.product(*(range(n) for n in mesh)):
        region = placement_region(shape, mesh, coord, placements)
        runs = region.runs(itemsize=4)
        got = torch.cat([raw[o : o + n] for o, n in runs]) if runs else torch.empty(0, dtype=torch.uint8)
        assert torch.equal(got.view(torch.float32).reshape(region.local_shape), region.take(full))
        assert sum(n for _, n in runs) == region.numel * 4
    assert len(placement_region((8, 6), (2,), (1,), [Shard(0)]).runs(itemsize=4)) == 1  # FSDP2: one read
    assert len(placement_region((8, 6), (2,), (1,), [Shard(1)]).runs(itemsize=4)) == 8  # row-parallel: one per row
    assert full_region((2, 3)).runs(itemsize=2) == [(0, 12)]


def test_strided_shard_of_fsdp_over_tensor_parallel() -> None:
    from torch.distributed.tensor.placement_types import _StridedShard

    # FSDP2 (dp) over a colwise-parallel weight (tp): tp's chunk is split again across dp
    shape, mesh, placements = (8, 2), (2, 2), [_StridedShard(0, split_factor=2), Shard(0)]
    full = torch.arange(16).reshape(shape)
    seen = []
    for coord in itertools.product(range(2), range(2)):
        region = placement_region(shape, mesh, coord, placements)
        tp_chunk = torch.chunk(full, 2)[coord[1]]
        assert torch.equal(region.take(full), torch.chunk(tp_chunk, 2)[coord[0]])
        seen += list(region.index[0])
    assert sorted(seen) == list(range(8))


def _run(entry: PlanEntry, region: Region, sources: dict[str, torch.Tensor], fill=None) -> torch.Tensor:
    pieces = source_regions(entry, region, {k: tuple(v.shape) for k, v in sources.items()})
    read = [p.region.take(sources[p.key]) for p in pieces]
    return assemble(entry, region, pieces, read, None if fill is None else region.take(fill))


def test_adapters_by_region_equal_the_adapter_on_the_whole_tensor() -> None:
    from weightsurgery.adapt import run_adapter

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, generator=g) for _ in range(3))
    head = torch.randn(10, 4, generator=g)
    fill = torch.randn(5, 4, generator=g)
    entries = [
        (PlanEntry("qkv", Action.ADAPT, sources=("q", "k", "v"), adapter="fuse"), {"q": q, "k": k, "v": v}, (18, 4), None),
        (PlanEntry("fc", Action.ADAPT, source="h", adapter="head", adapter_args={"rows": [7, 2, 9, 0, -1]}),
         {"h": head}, (5, 4), fill),
        (PlanEntry("k", Action.ADAPT, source="f", adapter="split", adapter_args={"index": 1, "sizes": [6, 6, 6]}),
         {"f": torch.cat([q, k, v])}, (6, 4), None),
        (PlanEntry("t", Action.ADAPT, source="h", adapter="transpose"), {"h": head}, (4, 10), None),
    ]
    for entry, sources, shape, f in entries:
        whole = run_adapter(entry.adapter, [sources[s] for s in entry.source_keys], shape, entry.adapter_args, fill=f)
        for world, placements in ((3, [Shard(0)]), (4, [Shard(0)]), (2, [Shard(1)])):
            for rank in range(world):
                region = placement_region(shape, (world,), (rank,), placements)
                assert torch.equal(_run(entry, region, sources, f), region.take(whole)), (entry.adapter, world, rank)


def test_whole_tensor_adapters_say_so() -> None:
    entry = PlanEntry("pos", Action.ADAPT, source="p", adapter="posembed", adapter_args={})
    assert source_regions(entry, full_region((1, 5, 4)), {"p": (1, 3, 4)}) is None


def test_a_pending_reduction_is_refused_with_the_fix() -> None:
    from torch.distributed.tensor import Partial

    from weightsurgery.errors import ShardedTransferError

    with pytest.raises(ShardedTransferError, match="redistribute it to Shard or Replicate"):
        placement_region((4, 2), (2,), (0,), [Partial()])
