"""Loading pretrained weights into an FSDP2 model on gloo ranks, three ways, side by side.

Each (method, world size) runs in its own ``torchrun --standalone`` launch, so
each rank's peak memory is its own. Every rank builds the same decoder on
``meta``, shards it with ``fully_shard`` (one group per block and the root),
then loads a sharded safetensors checkpoint (two files and an index):

* ``weightsurgery``: ``transfer(index, model)`` on every rank; each rank reads the byte ranges of its shards.
* ``broadcast_from_rank0``: rank 0 reads the whole checkpoint (``safetensors.torch.load_file`` per shard);
  ``set_model_state_dict(model, sd, StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))``.
* ``full_and_slice``: every rank reads the whole checkpoint and ``set_model_state_dict(...,
  full_state_dict=True)`` keeps its slices.

Per rank it prints: wall time of the load; tensor bytes read from files (weightsurgery:
the reader's own counters; the others: the bytes of every file they load); peak
resident memory above the resident memory before the load, as a multiple of
(model bytes / N). The checkpoint sits in the page cache (written just before).

Usage::

    python benchmarks/bench_distributed.py                 # 2 and 4 ranks, a ~67 MB model
    python benchmarks/bench_distributed.py --d 256 --layers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

METHODS = ("weightsurgery", "broadcast_from_rank0", "full_and_slice")


def build(vocab: int, d: int, layers: int):
    """A decoder: embedding, ``layers`` blocks (q, k, v, o, a 4x MLP, two norms), a final norm and a head."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)

    return Decoder()


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def worker(config: dict) -> None:
    import resource

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", timeout=timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    with torch.device("meta"):
        model = build(config["vocab"], config["d"], config["layers"])
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    from safetensors.torch import load_file

    from weightsurgery import transfer

    files = config["files"]
    file_bytes = sum(os.path.getsize(f) for f in files)
    dist.barrier()
    base = rss()
    start = time.perf_counter()
    method = config["method"]
    if method == "weightsurgery":
        report = transfer(config["index"], model)
        bytes_read = report.ranks[rank]["bytes_read"]
    elif method == "broadcast_from_rank0":
        sd = {k: v for f in files for k, v in load_file(f).items()} if rank == 0 else {}
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        bytes_read = file_bytes if rank == 0 else 0
    else:
        sd = {k: v for f in files for k, v in load_file(f).items()}
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
        bytes_read = file_bytes
    sd = None
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    local = next(iter(model.parameters())).to_local()
    assert not local.is_meta  # noqa: S101 - a benchmark's own sanity check
    out = {"rank": rank, "seconds": seconds, "bytes_read": bytes_read, "peak_over_base": peak - base,
           "model_bytes": model_bytes, "largest": max(p.numel() * p.element_size() for p in model.parameters())}
    Path(config["out"], f"{method}.{world}.{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in build(args.vocab, args.d, args.layers).state_dict().items()}
        keys = list(state)
        halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
        for name, part in halves.items():
            save_file({k: state[k] for k in part}, Path(tmp, name))
        index = Path(tmp, "model.safetensors.index.json")
        index.write_text(json.dumps({"weight_map": {k: n for n, part in halves.items() for k in part}}))
        model_bytes = sum(v.numel() * v.element_size() for v in state.values())
        del state
        print(f"model: {model_bytes / 2**20:.1f} MiB in {len(keys)} tensors, 2 safetensors shards")
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        for world in args.worlds:
            print(f"\n{world} gloo ranks (peak: resident memory above the start of the load, × model bytes / {world})")
            print(f"  {'method':<22} {'time/rank (s)':>22} {'bytes read/rank (MiB)':>28} {'peak × (model/N)':>26}")
            for method in METHODS:
                config = Path(tmp, f"{method}.{world}.json")
                config.write_text(json.dumps({"method": method, "index": str(index), "out": tmp,
                                              "files": [str(Path(tmp, n)) for n in halves], "vocab": args.vocab,
                                              "d": args.d, "layers": args.layers}))
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc-per-node={world}", __file__, "--worker", str(config)],
                               env=env, check=True, capture_output=True, timeout=1200)
                rows = [json.loads(Path(tmp, f"{method}.{world}.{r}.json").read_text()) for r in range(world)]
                times = " ".join(f"{r['seconds']:.2f}" for r in rows)
                read = " ".join(f"{r['bytes_read'] / 2**20:.1f}" for r in rows)
                peaks = " ".join(f"{r['peak_over_base'] / (r['model_bytes'] / world):.2f}" for r in rows)
                print(f"  {method:<22} {times:>22} {read:>28} {peaks:>26}")
            largest = rows[0]["largest"] / (rows[0]["model_bytes"] / world)
            print(f"  (the largest tensor is {largest:.2f} × model/N; goal: peak <= 1.2 + that)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(Path(sys.argv[2]).read_text()))
    else:
        main()
