"""Start ``torchrun --standalone`` for the distributed tests, bounded in time, in its own session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def torchrun(
    world: int, script: Path, config: Path, *, timeout: float, extra: tuple[str, ...] = ()
) -> tuple[int, str, int]:
    """Run ``script config`` on ``world`` gloo ranks; ``(exit status, output, the launcher's pid = its session)``.

    The launch runs in a new session; past ``timeout`` it is killed, and
    ``TimeoutError`` says so with the output's tail.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "--max-restarts=0", *extra, str(script), str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise TimeoutError(f"{world} ranks did not finish within {timeout} s:\n{log.decode()[-4000:]}") from None
    return proc.returncode, log.decode(), proc.pid


def left_running(session: int, marker: str) -> list[str]:
    """Processes still alive (not zombies) in ``session``, or anywhere with ``marker`` on their command line."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if fields[0] != "Z" and (int(fields[3]) == session or marker in cmdline):
            alive.append(f"{entry.name}: {cmdline[:200]}")
    return alive
