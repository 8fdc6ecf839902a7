"""Loading pretrained weights into an FSDP2 model on gloo ranks, side by side.

Each (method, world size, repeat) runs in its own ``torchrun --standalone``
launch, so each rank's peak memory is its own; the repeats go round the methods
in turn, so a change in the machine's load falls on all of them alike. Every
rank builds the same decoder on ``meta``, shards it with ``fully_shard`` (one
group per block and the root), then loads a sharded safetensors checkpoint
(two files and an index):

* ``weightsurgery``: ``transfer(index, model)`` on every rank; each rank reads the byte ranges of its shards.
* ``broadcast_from_rank0`` (baseline): rank 0 reads the whole checkpoint (``safetensors.torch.load_file`` per
  shard); ``set_model_state_dict(model, sd, StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))``.
* ``full_state_dict`` (baseline): every rank reads the whole checkpoint and calls ``set_model_state_dict(...,
  StateDictOptions(full_state_dict=True))`` (torch's own path: ``distribute_tensor`` scatters rank 0's copy).
* ``load_and_slice`` (baseline): every rank loads the whole checkpoint into its memory
  (``safetensors.torch.load`` of each file's bytes) and cuts out its own shards with no communication
  (``torch.chunk``'s piece, as FSDP2 shards, cloned), then ``load_state_dict(assign=True)``.
* ``mmap_slice`` (the floor): the same slicing from ``load_file``'s memory map, so a rank touches only the
  pages of its own shards: the least any method can copy, with none of a transfer's checks, and a
  process that dies of SIGBUS if a file shrinks under it (why weightsurgery reads with ``pread``).
  It is printed as the ratio weightsurgery / floor, as ``bench_apply.py`` does.

The timed span is the same for all: it starts at a barrier after the model is
built and sharded and the method's code is imported, and ends when the call
returns on that rank with every parameter's local shard filled (checked after the
span, with a checksum of every local shard that must be the same for all
methods). Opening and parsing the files is inside it. The code each method
imports lazily on its first call is imported before the span and timed apart
(``imports``): ``safetensors.torch`` and ``torch.distributed.checkpoint.state_dict``
for the others, the modules ``transfer`` imports on its first call for ours.
Child processes write bytecode to a temporary cache (``PYTHONPYCACHEPREFIX``), as an
installed package has it, even where ``PYTHONDONTWRITEBYTECODE`` is set.

Per rank it prints: wall time of the load in milliseconds, the minimum and the
median over the repeats; tensor bytes read from files (weightsurgery: the
reader's own counters; the others: the bytes of every file they load:
``load_file`` memory-maps, so the pages it touches are what it really reads);
peak resident memory during the load above the resident memory at its start
(``VmHWM`` reset through ``/proc/self/clear_refs``), as a multiple of (model bytes
/ N). A launch is done when its slowest rank is: the verdict compares that, min
and median, with every baseline, and gives the ratio to the floor. The
checkpoint sits in the page cache (written just before); dropping the cache
needs root, so a cold read is not measured.

Usage::

    python benchmarks/bench_distributed.py                        # 2 and 4 ranks, an 80 MiB model, 5 repeats
    python benchmarks/bench_distributed.py --vocab 32000 --d 1024 --layers 4 --repeat 3   # 470 MiB
    python benchmarks/bench_distributed.py --profile /tmp/prof    # cProfile of each rank's load, first repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

METHODS = ("weightsurgery", "broadcast_from_rank0", "full_state_dict", "load_and_slice", "mmap_slice")
BASELINES = ("broadcast_from_rank0", "full_state_dict", "load_and_slice")
FLOOR = "mmap_slice"

# What ``transfer`` imports on its first call (a safetensors index into a sharded model): imported before the span.
FIRST_CALL_IMPORTS = (
    "weightsurgery.adapt", "weightsurgery.match.planner", "weightsurgery.match.structure",
    "weightsurgery.match.aliases", "weightsurgery.match.fused", "weightsurgery.match.recurrent",
    "weightsurgery.match.suffix", "weightsurgery.match.order", "weightsurgery.match.wrappers",
    "weightsurgery.sources.files", "weightsurgery.sources.sharded", "weightsurgery.sources.safetensors_file",
    "weightsurgery.sources.dcp", "weightsurgery.init", "weightsurgery.apply.commit",
)


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


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak resident size (VmHWM) to the current one
        fh.write("5")


def _imports(method: str) -> float:
    import importlib

    start = time.perf_counter()
    if method == "weightsurgery":
        for name in ("weightsurgery.transfer", *FIRST_CALL_IMPORTS):
            importlib.import_module(name)
    else:
        for name in ("safetensors.torch", "torch.distributed.checkpoint.state_dict", "torch.distributed.tensor"):
            importlib.import_module(name)
    return time.perf_counter() - start


def _load(method: str, config: dict, model, rank: int) -> int:
    """Load the checkpoint into ``model`` by ``method``; the tensor bytes read from files."""
    files = config["files"]
    if method == "weightsurgery":
        from weightsurgery import transfer

        return transfer(config["index"], model).ranks[rank]["bytes_read"]
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    file_bytes = sum(os.path.getsize(f) for f in files)
    if method == "broadcast_from_rank0":
        sd = {k: v for f in files for k, v in load_file(f).items()} if rank == 0 else {}
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return file_bytes if rank == 0 else 0
    if method == "load_and_slice":  # every rank holds every byte of the checkpoint in its own memory
        from safetensors.torch import load

        sd = {k: v for f in files for k, v in load(Path(f).read_bytes()).items()}
    else:
        sd = {k: v for f in files for k, v in load_file(f).items()}
    if method == "full_state_dict":  # torch's own full-state-dict path: every rank holds it, rank 0's is scattered
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
        return file_bytes
    # load_and_slice, mmap_slice: each rank cuts its own FSDP2 shard (torch.chunk's piece along the Shard dim) out
    # of its copy, no communication; clone() so that the shards are the process's memory, not views of the mapped file
    import torch
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    local = {}
    for key, full in sd.items():
        param = params[key]
        (placement,) = param.placements
        pieces = torch.chunk(full, param.device_mesh.size(), dim=placement.dim)
        coord = param.device_mesh.get_coordinate()[0]
        piece = pieces[coord] if coord < len(pieces) else full.narrow(placement.dim, 0, 0)
        local[key] = DTensor.from_local(piece.clone(), param.device_mesh, param.placements, run_check=False,
                                        shape=param.shape, stride=param.stride())
    model.load_state_dict(local, assign=True)
    return file_bytes


def worker(config: dict) -> None:
    import torch
    import torch.distributed as dist
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
    method = config["method"]
    imports = _imports(method)
    profile = None
    if config.get("profile"):
        import cProfile

        profile = cProfile.Profile()
    dist.barrier()
    _reset_peak()
    base = _status("VmRSS")
    start = time.perf_counter()
    if profile is not None:
        profile.enable()
    bytes_read = _load(method, config, model, rank)
    if profile is not None:
        profile.disable()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    if profile is not None:
        profile.dump_stats(Path(config["profile"], f"{method}.{world}.{rank}.pstats"))
    params = list(model.parameters())
    locals_ = [p.to_local() for p in params]
    if any(t.is_meta for t in locals_):
        raise SystemExit(f"{method}: a parameter is still on meta after the load")
    checksum = sum(float(t.double().sum()) for t in locals_)
    out = {"rank": rank, "seconds": seconds, "imports": imports, "bytes_read": bytes_read,
           "peak_over_base": peak - base, "checksum": checksum,
           "model_bytes": sum(p.numel() * p.element_size() for p in params),
           "largest": max(p.numel() * p.element_size() for p in params)}
    Path(config["out"], f"{method}.{world}.{config['repeat']}.{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def _write_checkpoint(tmp: Path, args: argparse.Namespace) -> tuple[Path, list[Path], int, int]:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build(args.vocab, args.d, args.layers).state_dict().items()}
    keys = list(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, tmp / name)
    index = tmp / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: n for n, part in halves.items() for k in part}}))
    return index, [tmp / n for n in halves], sum(v.numel() * v.element_size() for v in state.values()), len(keys)


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v * 1000:.1f}" for v in values)


def _report(world: int, runs: dict[str, list[list[dict]]]) -> None:
    """Print one world size's table: per rank min / median milliseconds, bytes, peak; then the verdict."""
    print(f"\n{world} gloo ranks, {len(runs[METHODS[0]])} launches each (time: per rank, min / median over the "
          f"launches; peak: resident memory above the start of the load, x model bytes / {world})")
    print(f"  {'method':<21} {'time/rank min (ms)':>27} {'median (ms)':>27} {'imports (s)':>12} "
          f"{'bytes read/rank (MiB)':>24} {'peak x (model/N)':>24}")
    slowest: dict[str, list[float]] = {}
    for method in METHODS:
        launches = runs[method]
        per_rank = [[launch[r]["seconds"] for launch in launches] for r in range(world)]
        slowest[method] = [max(r["seconds"] for r in launch) for launch in launches]
        first = launches[0]
        imports = statistics.median(r["imports"] for launch in launches for r in launch)
        peaks = [max(launch[r]["peak_over_base"] for launch in launches) / (first[r]["model_bytes"] / world)
                 for r in range(world)]
        mins, medians = _fmt([min(t) for t in per_rank]), _fmt([statistics.median(t) for t in per_rank])
        read = " ".join(f"{r['bytes_read'] / 2**20:.1f}" for r in first)
        peak = " ".join(f"{p:.2f}" for p in peaks)
        print(f"  {method:<21} {mins:>27} {medians:>27} {imports:>12.3f} {read:>24} {peak:>24}")
    ours = slowest["weightsurgery"]
    for label, pick in (("min", min), ("median", statistics.median)):
        others = {m: pick(slowest[m]) for m in BASELINES}
        verdict = "PASS" if all(pick(ours) < v for v in others.values()) else "FAIL"
        shown = ", ".join(f"{m} {v * 1000:.1f}" for m, v in others.items())
        print(f"  slowest rank, {label}: weightsurgery {pick(ours) * 1000:.1f} ms vs {shown}: {verdict} (goal: faster "
              f"than every baseline); x{pick(ours) / pick(slowest[FLOOR]):.2f} the floor ({FLOOR} "
              f"{pick(slowest[FLOOR]) * 1000:.1f} ms)")
    largest = runs[FLOOR][0][0]["largest"] / (runs[FLOOR][0][0]["model_bytes"] / world)
    print(f"  (the largest tensor is {largest:.2f} x model/N; memory goal: peak <= 1.2 + that)")
    sums = {m: [round(r["checksum"], 3) for r in runs[m][0]] for m in METHODS}
    if len({tuple(v) for v in sums.values()}) != 1:
        raise SystemExit(f"the methods loaded different values: local checksums {sums}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="launches per (method, world size); min and median")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each rank's load here (an extra, untimed launch)")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        index, files, model_bytes, n_keys = _write_checkpoint(tmp, args)
        print(f"model: {model_bytes / 2**20:.1f} MiB in {n_keys} tensors, 2 safetensors shards; load average "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1", PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        runs = {w: {m: [] for m in METHODS} for w in args.worlds}
        # repeat -1: untimed launches that fill the bytecode cache (and write the profiles, when asked)
        for repeat in range(-1, args.repeat):
            for world in args.worlds if repeat >= 0 or args.profile else args.worlds[:1]:
                turn = repeat % len(METHODS)
                for method in METHODS[turn:] + METHODS[:turn] if repeat >= 0 or args.profile else METHODS[:1]:
                    config = tmp / f"{method}.{world}.json"
                    config.write_text(json.dumps({
                        "method": method, "index": str(index), "out": str(tmp), "files": [str(f) for f in files],
                        "vocab": args.vocab, "d": args.d, "layers": args.layers, "repeat": repeat,
                        "profile": str(args.profile) if args.profile and repeat == -1 else None}))
                    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    f"--nproc-per-node={world}", __file__, "--worker", str(config)],
                                   env=env, check=True, capture_output=True, timeout=1200)
                    if repeat >= 0:
                        runs[world][method].append(
                            [json.loads((tmp / f"{method}.{world}.{repeat}.{r}.json").read_text()) for r in range(world)])
        for world in args.worlds:
            _report(world, runs[world])
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(Path(sys.argv[2]).read_text()))
    else:
        main()
