"""How matching time grows with the number of keys: a dry run on metadata only, in one run.

Every figure is ``make_plan`` on shapes and dtypes (what ``transfer(...,
dry_run=True)`` does after resolving): no tensor data is read or made.

Columns:

- **exact+prefix**: ``strategies=["exact", "prefix"]`` on a Mixtral-like MoE
  decoder (64 experts a layer) whose checkpoint carries a ``module.`` prefix
  (DDP), so every key goes through the prefix strategy;
- **default**: the same inputs with every strategy (``strategies=None``). Once
  exact and prefix explain every key, the later strategies (fused, suffix,
  structure) must see nothing and cost nothing, so the two columns should agree;
- **renamed (structure)**: every strategy on a chain of blocks whose
  checkpoint names nothing alike (``trunk.blocks.7.lin_a.weight`` for
  ``7.0.weight``): only structural alignment can match it;
- **from_module**: ``TargetSpec.from_module`` on a real MoE module built on
  the meta device.

Each cell prints the run of ``--repeat`` with the least CPU time: its
wall-clock seconds, the process CPU seconds in brackets (on a shared machine
the CPU time is the steadier figure) with the part spent in Python's cyclic
garbage collector, and how many target keys the plan loads. The growth lines
give CPU time(4n) / CPU time(n), with and without the collector: linear
growth is 4x, quadratic 16x. A full collection walks every live object, so it
starts to show once a plan creates a few hundred thousand objects. A reference loop
(one million dict inserts) and the load average are printed first, so figures
from different machines can be compared.

The last table holds the goals of issue 9, each with its measured figure and
PASS or FAIL: exact+prefix on 200k keys under 1 s, structural alignment of
20k keys under 3 s, time at 4x the keys at most 5x the time (CPU seconds, the
garbage collector included), and the default order costing what exact+prefix
cost (at most 1.2x: they do the same work). A goal whose sizes were not run
says so.

Usage::

    python benchmarks/bench_matching_scale.py
    python benchmarks/bench_matching_scale.py --sizes 50000 200000 --structure-sizes 5000 20000 --repeat 1
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from weightsurgery.match.plan import Plan
from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.target import TargetSpec, TargetTensor
from weightsurgery.sources.checkpoint import TensorMeta

EXPERTS = 64
D, FF = 64, 128  # small shapes: matching cost depends on key count, not on tensor size


def moe_keys(n: int) -> list[tuple[str, tuple[int, ...], type]]:
    """The first ``n`` keys of a Mixtral-like decoder: attention, norms, router and experts per layer."""
    out: list[tuple[str, tuple[int, ...], type]] = [("embed_tokens.weight", (1000, D), nn.Embedding)]
    layer = 0
    while len(out) < n:
        p = f"layers.{layer}."
        out += [(f"{p}self_attn.{x}_proj.weight", (D, D), nn.Linear) for x in "qkvo"]
        out += [(f"{p}{x}_layernorm.weight", (D,), nn.LayerNorm) for x in ("input", "post_attention")]
        out.append((f"{p}block_sparse_moe.gate.weight", (EXPERTS, D), nn.Linear))
        for e in range(EXPERTS):
            q = f"{p}block_sparse_moe.experts.{e}."
            out += [(f"{q}w1.weight", (FF, D), nn.Linear), (f"{q}w2.weight", (D, FF), nn.Linear),
                    (f"{q}w3.weight", (FF, D), nn.Linear)]
        layer += 1
    return out[:n]


def moe_spec(n: int) -> TargetSpec:
    """A :class:`TargetSpec` of ``n`` MoE keys, built directly (no module, no tensors)."""
    tensors = {}
    for key, shape, kind in moe_keys(n):
        module, _, name = key.rpartition(".")
        tensors[key] = TargetTensor(key, shape, torch.float32, module, kind, name)
    return TargetSpec(tensors, {})


class MoE(nn.Module):
    """A real MoE module (for ``from_module``); build it on the meta device."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.attn = nn.ModuleDict({f"{x}_proj": nn.Linear(D, D, bias=False) for x in "qkvo"})
            block.norm1, block.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
            block.gate = nn.Linear(D, EXPERTS, bias=False)
            block.experts = nn.ModuleList(
                nn.ModuleDict({w: nn.Linear(D, FF, bias=False) for w in ("w1", "w2", "w3")}) for _ in range(EXPERTS)
            )
            self.layers.append(block)


def chain(blocks: int) -> nn.Module:
    """A chain of ``Linear, LayerNorm, Linear`` blocks whose widths cycle (as the structure tests use)."""
    layers = []
    for i in range(blocks):
        w = 8 + (i % 7)
        layers.append(nn.Sequential(nn.Linear(w, w + 1), nn.LayerNorm(w + 1), nn.Linear(w + 1, 8 + ((i + 1) % 7))))
    return nn.Sequential(*layers)


def renamed_chain(n: int) -> tuple[dict[str, TensorMeta], TargetSpec]:
    """About ``n`` keys: a chain target and its checkpoint under names that share nothing but the leaf."""
    with torch.device("meta"):
        model = chain(max(1, n // 6))
    spec = TargetSpec.from_module(model)
    names = ("lin_a", "norm", "lin_b")
    source = {}
    for key, t in spec.tensors.items():
        block, sub, leaf = key.split(".")
        source[f"trunk.blocks.{block}.{names[int(sub)]}.{leaf}"] = t.meta
    return source, spec


class _GCClock:
    """CPU seconds spent in the cyclic garbage collector while it is installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


def timed(fn: Callable[[], Plan], repeat: int) -> tuple[float, float, float, Plan]:
    """The run with the least CPU time: its wall time, CPU time, CPU time in the GC, and result."""
    best: tuple[float, float, float, Plan] | None = None
    for _ in range(repeat):
        gc.collect()
        clock = _GCClock()
        gc.callbacks.append(clock)
        wall, cpu = time.perf_counter(), time.process_time()
        plan = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gc.callbacks.remove(clock)
        if best is None or cpu < best[1]:
            best = (wall, cpu, clock.seconds, plan)
    assert best is not None
    return best


def cell(wall: float, cpu: float, in_gc: float, plan: Plan | None = None, total: int = 0) -> str:
    loaded = f" {len(plan.mapping)}/{total}" if plan is not None else ""
    return f"{wall:7.3f}s ({cpu:6.3f}, gc {in_gc:5.3f}){loaded}"


def growth(name: str, sizes: Sequence[int], times: Sequence[tuple[float, float]]) -> None:
    """CPU time(b) / CPU time(a), and the same without the time spent in the garbage collector."""
    for (a, (ta, ga)), (b, (tb, gb)) in zip(zip(sizes, times), zip(sizes[1:], times[1:])):
        print(f"  growth {name:<22} {a:>7} -> {b:<7} keys ({b / a:.0f}x): CPU time x{tb / ta:.2f}"
              f" (x{(tb - gb) / (ta - ga):.2f} outside the garbage collector)")


def reference() -> float:
    start = time.process_time()
    d: dict[str, int] = {}
    for i in range(1_000_000):
        d[str(i)] = i
    return time.process_time() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12_500, 50_000, 200_000])
    parser.add_argument("--structure-sizes", type=int, nargs="+", default=[5_000, 20_000])
    parser.add_argument("--module-sizes", type=int, nargs="+", default=[12_500, 50_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"reference: 1M dict inserts {reference():.3f}s CPU; load average {load:.2f} on {os.cpu_count()} CPUs")
    print("cells: wall seconds (CPU seconds, of which in the garbage collector) loaded/target keys\n")

    print(f"{'keys':>8} | {'exact+prefix (module. prefix)':<44} | {'all strategies, default':<44}")
    sizes, t_prefix, t_default = sorted(args.sizes), [], []
    for n in sizes:
        spec = moe_spec(n)
        source = {f"module.{k}": t.meta for k, t in spec.tensors.items()}
        a = timed(lambda: make_plan(source, spec, PlanOptions(strategies=["exact", "prefix"])), args.repeat)
        b = timed(lambda: make_plan(source, spec, PlanOptions()), args.repeat)
        t_prefix.append((a[1], a[2]))
        t_default.append((b[1], b[2]))
        print(f"{n:>8} | {cell(*a, total=n):<44} | {cell(*b, total=n):<44}", flush=True)
        del spec, source, a, b
    growth("exact+prefix", sizes, t_prefix)
    growth("all strategies", sizes, t_default)

    print(f"\n{'keys':>8} | {'all strategies, renamed (structure)':<36}")
    ssizes, t_structure = sorted(args.structure_sizes), []
    for n in ssizes:
        source, spec = renamed_chain(n)
        r = timed(lambda: make_plan(source, spec, PlanOptions()), args.repeat)
        t_structure.append((r[1], r[2]))
        ssizes[ssizes.index(n)] = len(spec.tensors)
        print(f"{len(spec.tensors):>8} | {cell(*r, total=len(spec.tensors)):<36}", flush=True)
    growth("renamed (structure)", ssizes, t_structure)

    print(f"\n{'keys':>8} | {'TargetSpec.from_module (meta MoE)':<36}")
    msizes, t_module = sorted(args.module_sizes), []
    for n in msizes:
        with torch.device("meta"):
            model = MoE(max(1, n // (9 + 3 * EXPERTS)))  # 4 attention + 4 norm + router + experts
        wall, cpu, in_gc, spec = timed(lambda: TargetSpec.from_module(model), args.repeat)  # type: ignore[arg-type,return-value]
        t_module.append((cpu, in_gc))
        msizes[msizes.index(n)] = len(spec.tensors)
        print(f"{len(spec.tensors):>8} | {cell(wall, cpu, in_gc):<36}", flush=True)
        del model
    growth("from_module", msizes, t_module)

    goals(sizes, t_prefix, t_default, ssizes, t_structure)


def _ratio(sizes: Sequence[int], times: Sequence[tuple[float, float]], big: int) -> tuple[str, float] | None:
    """CPU time(big) / CPU time(big / 4), when both were measured (within 1% of the sizes asked)."""
    def at(n: int) -> float | None:
        for size, (cpu, _) in zip(sizes, times):
            if abs(size - n) <= n / 100:
                return cpu
        return None

    a, b = at(big // 4), at(big)
    return (f"{big // 4} -> {big}", b / a) if a and b else None


def goals(
    sizes: Sequence[int],
    t_prefix: Sequence[tuple[float, float]],
    t_default: Sequence[tuple[float, float]],
    ssizes: Sequence[int],
    t_structure: Sequence[tuple[float, float]],
) -> None:
    """The goals of issue 9, each measured here (CPU seconds of the best run, garbage collector included)."""
    rows: list[tuple[str, str, str, bool | None]] = []

    def cpu_at(ns: Sequence[int], times: Sequence[tuple[float, float]], n: int) -> float | None:
        hits = [t for size, (t, _) in zip(ns, times) if abs(size - n) <= n / 100]
        return hits[0] if hits else None

    for label, ns, times, n, limit in (
        ("exact+prefix (module. prefix), 200000 keys", sizes, t_prefix, 200_000, 1.0),
        ("structural alignment (renamed), 20000 keys", ssizes, t_structure, 20_000, 3.0),
    ):
        t = cpu_at(ns, times, n)
        rows.append((label, f"{t:.3f} s" if t is not None else "not run", f"< {limit:g} s", None if t is None else t < limit))
    for label, ns, times, big in (
        ("growth exact+prefix at 4x the keys", sizes, t_prefix, 200_000),
        ("growth all strategies at 4x the keys", sizes, t_default, 200_000),
        ("growth structure at 4x the keys", ssizes, t_structure, 20_000),
    ):
        r = _ratio(ns, times, big)
        rows.append((f"{label} ({r[0]})" if r else label, f"x{r[1]:.2f}" if r else "not run", "<= x5", None if r is None else r[1] <= 5))
    n = max(sizes)
    a, b = cpu_at(sizes, t_prefix, n), cpu_at(sizes, t_default, n)
    if a and b:
        rows.append((f"default order / exact+prefix, {n} keys", f"x{b / a:.2f}", "<= x1.2", b / a <= 1.2))

    print(f"\n{'goal (issue 9)':<56} | {'measured (CPU)':>14} | {'goal':>8} | result")
    for label, measured, goal, ok in rows:
        verdict = "n/a" if ok is None else "PASS" if ok else "FAIL"
        print(f"{label:<56} | {measured:>14} | {goal:>8} | {verdict}")


if __name__ == "__main__":
    main()
