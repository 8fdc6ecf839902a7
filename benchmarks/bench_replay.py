"""What a factory target's leftovers cost: the constructor's second build, with only them real.

A factory target is built on the meta device. Its leftovers (a new head) get the
values the constructor gives them from a second build that leaves only their
parameters real (``weightsurgery.factory.ConstructorReplay``). This prints that
cost next to the first (meta) build and a full CPU build::

    python benchmarks/bench_replay.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import timm

from weightsurgery.factory import build


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"{'model':<24} {'meta build':>11} {'replay (head)':>14} {'full CPU build':>15}")
    for name, head in (("resnet50", "fc"), ("vit_base_patch16_224", "head")):
        def factory(name: str = name) -> object:
            return timm.create_model(name, num_classes=10)

        built = build(factory)
        keys = [f"{head}.weight", f"{head}.bias"]
        meta = best(lambda: build(factory))
        replay = best(lambda: built.replay.values(keys, seed=0))  # type: ignore[union-attr]
        full = best(factory)
        print(f"{name:<24} {meta * 1e3:>8.0f} ms {replay * 1e3:>11.0f} ms {full * 1e3:>12.0f} ms")


if __name__ == "__main__":
    main()
