"""One rank of the scatter tests: ``torchrun --standalone --nproc-per-node N scatter_worker.py CONFIG``.

Each case's tensors only rank 0 can make (a position-embedding resample of a
safetensors source; every tensor of a torch pickle) reach each rank as its own
region. The rank checks its shards against torch's own oracle
(``distribute_tensor(reference, mesh, placements).to_local()``, bit for bit),
and writes what it found, with the bytes it received and the bytes its
received shards hold, to ``<out>/<case>.rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

sys.path.insert(0, str(Path(__file__).parent))
from posembed_models import PosModel  # noqa: E402
from sharded_models import TinyLM  # noqa: E402
from sharded_worker import fsdp, tp_plan  # noqa: E402

from weightsurgery import transfer  # noqa: E402


def build(case: str, world: int) -> nn.Module:
    """The sharded target of ``case``, built on meta."""
    with torch.device("meta"):
        model = PosModel() if case.startswith("resample") else TinyLM(tied=False)
    if case == "resample":  # FSDP2: Shard(0) over every rank
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    elif case == "resample2d":  # TP then FSDP2 over a (dp, tp) mesh: _StridedShard, and pos_embed on dp alone
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"position_embedding": RowwiseParallel(), "proj": ColwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
    elif case == "pickle":
        fsdp(model, init_device_mesh("cpu", (world,)))
    elif case == "pickle2d":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], tp_plan())
        fsdp(model, mesh["dp"])
    else:
        raise ValueError(case)
    return model


def run_case(case: str, config: dict, rank: int, world: int) -> dict[str, object]:
    model = build(case, world)
    source = config["posembed"] if case.startswith("resample") else config["pickle"]
    report = transfer(source, model, on_mismatch="adapt")
    reference = torch.load(config["refs"][case.removesuffix("2d")], weights_only=True)
    state = model.state_dict()
    records = report.to_dict()["records"]
    scattered = [r["target"] for r in records if r.get("adapter") == "pos_embed"] if case.startswith("resample") \
        else [r["target"] for r in records if r["status"] == "loaded"]
    wrong = []
    for key, value in state.items():
        # src_data_rank=None: torch splits the tensor here (its scatter asserts on uneven _StridedShard pieces)
        expected = distribute_tensor(reference[key], value.device_mesh, value.placements, src_data_rank=None).to_local()
        if not isinstance(value, DTensor) or value.to_local().is_meta or not torch.equal(value.to_local(), expected):
            wrong.append(key)
        if not torch.equal(value.full_tensor(), reference[key]):
            wrong.append(f"{key} (full)")
    return {
        "case": case, "rank": rank, "world": world, "wrong": wrong, "scattered": scattered,
        "stats": report.to_dict()["ranks"],
        "scattered_local_bytes": sum(_nbytes(state[k].to_local()) for k in scattered),
        "scattered_full_bytes": sum(_nbytes(reference[k]) for k in scattered),
        "placements": {k: str(state[k].placements) for k in scattered},
        "local_shapes": {k: list(state[k].to_local().shape) for k in scattered},
    }


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=config.get("timeout", 60)))
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in config["cases"]:
        if case.endswith("2d") and world % 2:
            continue
        try:
            result = run_case(case, config, rank, world)
        except Exception:  # the test reports it
            result = {"case": case, "rank": rank, "crash": traceback.format_exc()}
        (Path(config["out"]) / f"{case}.rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
