"""One rank of the sharded-transfer tests: ``torchrun --standalone --nproc-per-node N sharded_worker.py CONFIG``.

CONFIG (JSON) names the source files, the single-process reference of each case
(``refs``) and the cases to run. For each case the rank builds and shards a model
with torch's own APIs, calls ``transfer`` exactly as on one process, and checks
its result against torch's own oracle: ``distribute_tensor(reference, mesh,
placements).to_local()`` is what its local shard must hold, bit for bit, and
``full_tensor()`` what the whole model must hold. It writes what it found to
``<out>/<case>.rank<r>.json``; the test reads and asserts.
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
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

sys.path.insert(0, str(Path(__file__).parent))
from sharded_models import Classifier, TinyLM  # noqa: E402

from weightsurgery import transfer  # noqa: E402

LM_INIT = {"adapter.*": "normal(std=0.02)"}


def tp_plan(layers: int = 2) -> dict[str, object]:
    plan: dict[str, object] = {}
    for i in range(layers):
        for name in ("q", "k", "v", "up"):
            plan[f"blocks.{i}.{name}"] = ColwiseParallel()  # weight and bias Shard(0)
        for name in ("o", "down"):
            plan[f"blocks.{i}.{name}"] = RowwiseParallel()  # weight Shard(1), bias Replicate
    return plan


def fsdp(model: nn.Module, mesh: object) -> nn.Module:
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build(case: str, world: int) -> tuple[nn.Module, dict[str, object]]:
    """The sharded target of ``case`` and the transfer's keyword arguments."""
    mesh = init_device_mesh("cpu", (world,))
    meta = torch.device("meta")
    if case in ("fsdp_meta", "pickle", "dcp", "missing", "corrupt", "raises", "seeds", "dry_run"):
        with meta:
            return fsdp(TinyLM(extra=True), mesh), {"init": LM_INIT, "seed": 0}
    if case == "fsdp_real":
        torch.manual_seed(1)  # the same constructor values on every rank, and in the reference
        return fsdp(TinyLM(extra=True), mesh), {"init": LM_INIT, "seed": 0}
    if case == "fused":
        with meta:
            return fsdp(TinyLM(fused=True, tied=False), mesh), {}
    if case == "head":
        with meta:
            model = Classifier(5)
        fully_shard(model.fc, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, {"classes": [7, 2, 9, 0], "seed": 0}
    if case == "hf_factory":  # transfer builds it from the folder's config.json on meta; parallelize= shards it
        return None, {"parallelize": lambda model: _shard_llama(model, mesh)}
    if case == "hf_llama":  # a transformers model built on meta: its rotary inv_freq is computed again
        import transformers

        config = transformers.AutoConfig.from_pretrained(config_dir(case))
        with meta:
            model = transformers.AutoModelForCausalLM.from_config(config)
        return _shard_llama(model, mesh), {}
    if case == "tp":
        with meta:
            model = TinyLM(tied=False)
        parallelize_module(model, mesh, tp_plan())
        model.norm.weight = nn.Parameter(distribute_tensor(model.norm.weight, mesh, [Replicate()]))
        return model, {}
    if case == "mesh2d":
        mesh2 = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
        with meta:
            model = TinyLM(tied=False)
        parallelize_module(model, mesh2["tp"], tp_plan())
        return fsdp(model, mesh2["dp"]), {}
    raise ValueError(case)


def config_dir(case: str) -> str:
    return CONFIG["llama"]


def source_for(case: str, config: dict[str, str], rank: int, world: int) -> str:
    if case in ("pickle", "dcp"):
        return config[case]
    if case in ("hf_llama", "hf_factory"):  # a folder: model.safetensors and config.json
        return config["llama"]
    if case == "head":
        return config["classifier"]
    if case == "missing" and rank == 1:
        return config["missing"]
    if case == "corrupt" and rank == world - 1:
        return config["corrupt"]
    return config["index"]


def _shard_llama(model: nn.Module, mesh: object) -> nn.Module:
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def run_case(case: str, config: dict, rank: int, world: int) -> dict[str, object]:
    model, kwargs = build(case, world)
    dst = model if model is not None else "transformers:AutoModelForCausalLM"  # a factory: transfer builds it
    before = None if model is None else {
        k: (type(p).__name__, str(getattr(p, "placements", None))) for k, p in model.named_parameters()}
    if case == "raises":
        def progress(done: int, total: int) -> None:
            if rank == world - 1 and done == 3:
                raise ValueError("progress callback failed on the last rank")
        kwargs["progress"] = progress
    if case == "seeds":  # each rank its own seed: different inits, which no rank may keep
        kwargs["seed"] = rank
    if case == "dry_run" and rank == world - 1:  # one rank plans only, while the others transfer
        kwargs["dry_run"] = True
    out: dict[str, object] = {"case": case, "rank": rank, "world": world}
    counted = Counted()
    try:
        with counted:
            report = transfer(source_for(case, config, rank, world), dst, **kwargs)
    except Exception as exc:
        out["error"] = {"type": type(exc).__name__, "message": str(exc),
                        "phase": getattr(exc, "phase", None), "failures": getattr(exc, "failures", None)}
        out["untouched"] = model is None or all(
            p.to_local().is_meta for p in model.parameters() if isinstance(p, DTensor))
        return out
    if model is None:
        model = report.model
        out["sharded"] = sum(isinstance(p, DTensor) for p in model.parameters())
    after = {k: (type(p).__name__, str(getattr(p, "placements", None))) for k, p in model.named_parameters()}
    out["collectives"] = counted.calls
    out["placements_kept"] = before in (None, after)
    out["placements"] = after
    out["report"] = report.to_dict()
    out["report_json"] = report.to_json(indent=None)
    reference = torch.load(config["refs"]["hf_llama" if case == "hf_factory" else case], weights_only=True)
    state = model.state_dict()
    local_wrong, full_wrong, on_meta = [], [], []
    local_bytes = 0
    for key, value in state.items():
        want = reference[key]
        if isinstance(value, DTensor):
            expected = distribute_tensor(want, value.device_mesh, value.placements).to_local()
            local = value.to_local()
            local_bytes += local.numel() * local.element_size()
            if local.is_meta or not torch.equal(local, expected):
                local_wrong.append(key)
            full = value.full_tensor()
        else:
            full = value
        if full.is_meta:
            on_meta.append(key)
        elif not torch.equal(full, want):
            full_wrong.append(key)
    loaded = [r["target"] for r in out["report"]["records"] if r["status"] == "loaded"]
    out["loaded_local_bytes"] = sum(_local_nbytes(state[k]) for k in loaded)
    if case in ("hf_llama", "hf_factory"):
        expected = torch.load(config["refs"]["hf_llama_extra"], weights_only=True)
        rotary = model.model.rotary_emb
        out["inv_freq_equal"] = (not rotary.inv_freq.is_meta) and torch.equal(rotary.inv_freq, expected["inv_freq"])
        with torch.no_grad():
            logits = model(expected["ids"]).logits
        out["logits_close"] = bool(torch.allclose(logits, expected["logits"], atol=1e-5))
    out.update(local_wrong=local_wrong, full_wrong=full_wrong, on_meta=on_meta, local_bytes=local_bytes,
               tied=getattr(model, "head", None) is not None and model.head.weight is model.embed.weight)
    return out


def _local_nbytes(t: torch.Tensor) -> int:
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


class Counted:
    """Counts the calls of ``torch.distributed``'s collectives made while it is entered (not those inside torch)."""

    NAMES = ("all_gather", "all_gather_object", "all_reduce", "broadcast", "broadcast_object_list", "gather_object",
             "barrier", "scatter", "send", "recv", "isend", "irecv")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __enter__(self) -> Counted:
        self.saved = {n: getattr(dist, n) for n in self.NAMES}
        for name, fn in self.saved.items():
            def counting(*args, _name=name, _fn=fn, **kwargs):
                self.calls[_name] = self.calls.get(_name, 0) + 1
                return _fn(*args, **kwargs)
            setattr(dist, name, counting)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


CONFIG: dict = {}


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    CONFIG.update(config)
    dist.init_process_group("gloo", timeout=timedelta(seconds=config.get("timeout", 30)))
    rank, world = dist.get_rank(), dist.get_world_size()
    out_dir = Path(config["out"])
    for case in config["cases"]:
        if (case == "mesh2d" and world % 2) or (case in ("hf_llama", "hf_factory") and world != 2):
            continue
        try:
            result = run_case(case, config, rank, world)
        except Exception:  # the test reports it
            result = {"case": case, "rank": rank, "crash": traceback.format_exc()}
        (out_dir / f"{case}.rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
