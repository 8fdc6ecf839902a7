"""A rank killed outright mid-transfer (gloo, torchrun): the survivors end on their own, naming it.

``os._exit`` / ``SIGKILL`` leave no exception to exchange: the survivors' next
collective fails (at once where they talk to the dead rank, at the process
group's timeout where they wait on a survivor that gave up). Each survivor must
then stop, with no further collective on the broken group, and raise
``RankUnreachableError`` naming the dead rank (a roll call through torchrun's
store), within the timeout plus a short grace; torchrun exits non-zero, and no
process is left.

torchrun's agent stops every worker as soon as it sees one fail; its
``--monitor-interval`` is set past the survivors' own deadline here so that
what is tested is how the survivors end by themselves.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from launch import left_running, torchrun
from safetensors.torch import save_file
from sharded_models import TinyLM, pretrained

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "killed_worker.py"
TIMEOUT_S = 20  # the process group's: init_process_group(timeout=...)
MONITOR_S = 75  # torchrun polls its workers this often: past the survivors' deadline (timeout + grace) and start-up
SCENARIOS = {  # name: (world, victim, when, how, source)
    "stage": (4, 3, "stage", "exit", "pickle"),   # mid-scatter: rank 0 is sending the victim its regions
    "commit": (2, 0, "commit", "sigkill", "index"),  # rank 0 itself, as it starts writing its shards
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("killed")
    lm = pretrained(TinyLM(tied=False))
    torch.save(lm, tmp / "lm.pt")
    save_file(lm, tmp / "lm.safetensors")
    sources = {"pickle": str(tmp / "lm.pt"), "index": str(tmp / "lm.safetensors")}
    out: dict[str, dict] = {}

    def launch(name: str) -> None:
        world, victim, when, how, source = SCENARIOS[name]
        folder = tmp / name
        folder.mkdir()
        config = tmp / f"{name}.json"
        config.write_text(json.dumps({"source": sources[source], "out": str(folder), "timeout": TIMEOUT_S,
                                      "victim": victim, "when": when, "how": how}))
        try:
            status, log, session = torchrun(world, WORKER, config, timeout=MONITOR_S * 3,
                                            extra=(f"--monitor-interval={MONITOR_S}",))
        except TimeoutError as exc:
            out[name] = {"hung": str(exc)}
            return
        out[name] = {"status": status, "log": log, "left": left_running(session, str(config)),
                     "results": {int(p.stem.removeprefix("rank")): json.loads(p.read_text())
                                 for p in folder.glob("rank*.json")}}

    threads = [threading.Thread(target=launch, args=(name,)) for name in SCENARIOS]  # both wait out timeouts
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_survivors_of_a_killed_rank_end_with_an_error_naming_it(runs: dict, name: str) -> None:
    world, victim, when, _, _ = SCENARIOS[name]
    run = runs[name]
    assert "hung" not in run, run.get("hung")
    assert run["status"] != 0, run["log"][-4000:]
    assert run["left"] == [], f"processes left running: {run['left']}"
    results = run["results"]
    survivors = [r for r in range(world) if r != victim]
    assert sorted(results) == survivors, f"not every survivor ended by itself:\n{run['log'][-4000:]}"
    for rank in survivors:
        error = results[rank]["error"]
        assert error is not None, f"rank {rank} finished as if nothing happened"
        assert error["type"] == "RankUnreachableError", error
        assert error["phase"] == when and error["missing"] == [victim], error
        assert f"rank(s) {victim} did not answer at '{when}'" in error["message"], error["message"]
        assert str(victim) in error["failures"]
