"""One rank on a one-GPU mesh: ``torchrun --standalone --nproc-per-node 1 device_worker.py CONFIG`` (CUDA only).

:func:`reference_setup` (run by the test, on the CPU) writes a float16 source,
the single-process transfer of it into a CPU model (the reference) and the
CONFIG. This worker shards the same model with FSDP2 on a ``cuda`` mesh of one
rank (the default group ``cpu:gloo,cuda:nccl``: the ranks' exchanges run on
gloo) and transfers, for three cases, writing ``<out>/<case>.json``:

``real``
    a model already on the GPU: the peak device memory above the model, and
    every local shard against the reference, bit for bit.
``meta``
    a model on ``meta`` (its tensors become real on the GPU at commit), with a
    leftover and a non-persistent buffer its module computes.
``fault``
    a model on the GPU whose commit fails after its last write: the rollback
    must restore every shard bit for bit, with no undo copy on the device.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
from cuda_memory import SLACK, peak_during  # noqa: E402
from sharded_models import Rotary, TinyLM  # noqa: E402

from weightsurgery import transfer  # noqa: E402

SIZE = dict(vocab=4096, d=512, layers=2, tied=False)  # ~40 MiB: a second copy on the device stands out from the slack
INIT = {"adapter.*": "normal(std=0.02)"}


class WithRotary(TinyLM):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rotary = Rotary()


def reference_setup(folder: Path) -> Path:
    """The source, the CPU reference of each case and the worker's CONFIG, under ``folder``."""
    torch.manual_seed(1)
    state = {k: (v.detach() * 3).to(torch.float16).contiguous() for k, v in TinyLM(**SIZE).state_dict().items()}
    save_file(state, folder / "w.safetensors")
    torch.manual_seed(0)
    real = transfer(folder / "w.safetensors", TinyLM(**SIZE), quiet=True).model
    with torch.device("meta"):
        meta = TinyLM(extra=True, **SIZE)
    meta = transfer(folder / "w.safetensors", meta, init=INIT, seed=0, quiet=True).model
    torch.save(real.state_dict(), folder / "ref-real.pt")
    torch.save(meta.state_dict(), folder / "ref-meta.pt")
    config = folder / "config.json"
    config.write_text(json.dumps({"dir": str(folder)}))
    return config


def sharded(model: nn.Module, mesh: object) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def shards(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each tensor's local shard (the whole tensor on one rank), as the model holds it."""
    return {k: v.to_local() if hasattr(v, "to_local") else v for k, v in model.state_dict().items()}


def run_case(case: str, folder: Path, mesh: object) -> dict[str, object]:
    commit_module = importlib.import_module("weightsurgery.apply.commit")

    torch.manual_seed(0)
    if case == "meta":
        with torch.device("meta"):
            model = sharded(WithRotary(extra=True, **SIZE), mesh)
    else:
        model = sharded(TinyLM(**SIZE).cuda(), mesh)
    sizes = [t.numel() * t.element_size() for t in shards(model).values()]
    kwargs = dict(init=INIT, seed=0) if case == "meta" else {}
    out: dict[str, object] = {"case": case, "total": sum(sizes), "largest": max(sizes), "slack": SLACK}
    before = {k: v.detach().cpu().clone() for k, v in shards(model).items()} if case == "fault" else {}
    src = folder / "w.safetensors"
    if case == "fault":
        original = commit_module._write_tensors

        def then_fail(*args, **kw):
            original(*args, **kw)
            raise RuntimeError("injected after the last write")

        commit_module._write_tensors = then_fail

        def failing() -> None:
            try:
                transfer(src, model, quiet=True)
            except Exception as exc:
                out.update(error=type(exc).__name__, phase=getattr(exc, "phase", None), message=str(exc)[:500])

        try:
            out["peak"] = peak_during(failing)
        finally:
            commit_module._write_tensors = original
        now = shards(model)
        out["changed"] = [k for k in before if not torch.equal(now[k].cpu(), before[k])]
    else:
        out["peak"] = peak_during(lambda: transfer(src, model, quiet=True, **kwargs))
        reference = torch.load(folder / f"ref-{case}.pt", weights_only=True)
        now = shards(model)
        out["wrong"] = [k for k, v in now.items() if v.is_meta or not torch.equal(v.cpu(), reference[k])]
        out["wrong"] += [k for k in reference if k not in now]
        if case == "meta":
            inv_freq = model.rotary.inv_freq
            out["inv_freq_on_cuda"] = inv_freq.device.type == "cuda"
            out["inv_freq_equal"] = not inv_freq.is_meta and bool(torch.equal(inv_freq.cpu(), Rotary()._freqs()))
    not_cuda = [k for k, v in shards(model).items() if v.device.type != "cuda"]
    out.update(on_cuda=not not_cuda, on_cuda_not=not_cuda)
    return out


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    folder = Path(json.loads(Path(sys.argv[1]).read_text())["dir"])
    torch.cuda.set_device(0)
    dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timedelta(seconds=60))
    mesh = init_device_mesh("cuda", (1,))
    for case in ("real", "meta", "fault"):
        try:
            result = run_case(case, folder, mesh)
        except Exception:  # the test reports it
            result = {"case": case, "exception": traceback.format_exc()}
        (folder / f"{case}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
