"""One rank of the killed-rank tests: ``torchrun ... killed_worker.py CONFIG``.

Every rank transfers into an FSDP2 model on meta; rank ``victim`` is killed
outright (``os._exit`` or ``SIGKILL``: no exception, no cleanup) at ``when``:
``"stage"``, from the progress callback after a few tensors have been scattered
(a torch pickle: rank 0 sends each rank its regions), or ``"commit"``, as it
starts writing its shards. The survivors must end on their own with an error
that names the victim; each writes what it raised to ``<out>/rank<r>.json`` and
exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).parent))
from sharded_models import TinyLM  # noqa: E402
from sharded_worker import fsdp  # noqa: E402

import weightsurgery.apply.commit as commit_module  # noqa: E402
from weightsurgery import transfer  # noqa: E402


def die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=config["timeout"]))
    rank, world = dist.get_rank(), dist.get_world_size()
    victim, when, how = config["victim"], config["when"], config["how"]
    with torch.device("meta"):
        model = fsdp(TinyLM(tied=False), init_device_mesh("cpu", (world,)))

    def progress(done: int, total: int) -> None:
        if when == "stage" and rank == victim and done == 3:
            die(how)

    real_commit = commit_module.commit

    def commit(*args, **kwargs):  # what apply_sharded calls to write the shards
        if when == "commit" and rank == victim:
            die(how)
        return real_commit(*args, **kwargs)

    commit_module.commit = commit
    started = time.monotonic()
    try:
        transfer(config["source"], model, progress=progress)
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc), "phase": getattr(exc, "phase", None),
                 "missing": list(getattr(exc, "missing", ())), "failures": getattr(exc, "failures", None),
                 "seconds": round(time.monotonic() - started, 1)}
        (Path(config["out"]) / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "error": error}))
        sys.exit(1)
    (Path(config["out"]) / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "error": None}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
