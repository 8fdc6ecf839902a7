"""Start-up cost: ``import weightsurgery``, the CLI's ``--help`` and ``inspect`` against ``import torch``.

Each command runs in a fresh interpreter, round-robin (one of each, then the
next round), so that the machine's load falls on every command alike. It prints
the median and the best wall time of each, and each one's difference to
``python -c "import torch"`` measured in the same rounds::

    python benchmarks/bench_startup.py            # 7 rounds
    python benchmarks/bench_startup.py --rounds 15

"the whole public API" loads every name in ``weightsurgery.__all__`` (what
``from weightsurgery import *`` does); ``import weightsurgery`` alone loads
them on first use.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(safetensors_file: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    cli = [*py, "-m", "weightsurgery"]
    return {
        'python -c "import torch"': [*py, "-c", "import torch"],
        "import weightsurgery": [*py, "-c", "import weightsurgery"],
        "the whole public API": [*py, "-c", "from weightsurgery import *"],
        "weightsurgery --help": [*cli, "--help"],
        "weightsurgery plan --help": [*cli, "plan", "--help"],
        "weightsurgery transfer --help": [*cli, "transfer", "--help"],
        "weightsurgery inspect x.safetensors": [*cli, "inspect", str(safetensors_file)],
    }


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        save_file({f"blocks.{i}.weight": torch.zeros(64, 64) for i in range(50)}, str(path))
        cmds = commands(path)
        for argv_ in cmds.values():  # warm the file cache once
            wall(argv_)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, argv_ in cmds.items():
                times[name].append(wall(argv_))
    base = list(times)[0]
    base_median = statistics.median(times[base])
    print(f"{args.rounds} rounds, fresh interpreter each; wall seconds")
    print(f"{'command':<38} {'median':>7} {'best':>7} {'median - import torch':>22}")
    for name, ts in times.items():
        med = statistics.median(ts)
        diff = "" if name == base else f"{med - base_median:+.2f} s"
        print(f"{name:<38} {med:>6.2f}s {min(ts):>6.2f}s {diff:>22}")


if __name__ == "__main__":
    main()
