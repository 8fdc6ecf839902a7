"""Tensors only rank 0 can make reach each rank as its own region, not whole (gloo, 2 and 4 ranks).

A position-embedding resample needs the whole source tensor, and a torch pickle
cannot be read by range: rank 0 makes each full tensor and sends every rank
only the region it holds. Each rank's ``bytes_received`` (counted where the
bytes land) must be exactly the bytes of those shards, and the shards must be
torch's own ``distribute_tensor(reference, mesh, placements).to_local()``, bit
for bit: uneven ``torch.chunk`` rows, empty shards, ``_StridedShard`` on a 2-D
mesh, and a tensor held whole by the ranks of one mesh row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch import left_running, torchrun
from posembed_models import PosModel
from safetensors.torch import save_file
from sharded_models import TinyLM, pretrained

from weightsurgery import transfer

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "scatter_worker.py"
CASES = ["resample", "resample2d", "pickle", "pickle2d"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, list[dict]]]:
    """``{world: {case: [rank 0's result, rank 1's, ...]}}``, one launch per world size."""
    tmp = tmp_path_factory.mktemp("scatter")
    save_file(pretrained(PosModel(grid=4), seed=5), tmp / "posembed.safetensors")  # 17 tokens -> 37
    torch.save(pretrained(TinyLM(tied=False)), tmp / "lm.pt")
    with torch.device("meta"):
        pos_model, lm_model = PosModel(), TinyLM(tied=False)
    resampled = transfer(tmp / "posembed.safetensors", pos_model, on_mismatch="adapt")
    loaded = transfer(tmp / "lm.pt", lm_model, on_mismatch="adapt")
    assert {r.target for r in resampled.records.values() if r.adapter == "pos_embed"} == {
        "pos_embed", "position_embedding.weight"}
    refs = {"resample": str(tmp / "ref-resample.pt"), "pickle": str(tmp / "ref-pickle.pt")}
    torch.save(resampled.model.state_dict(), refs["resample"])
    torch.save(loaded.model.state_dict(), refs["pickle"])
    out: dict[int, dict[str, list[dict]]] = {}
    for world in (2, 4):
        folder = tmp / f"world{world}"
        folder.mkdir()
        config = tmp / f"config{world}.json"
        config.write_text(json.dumps({"posembed": str(tmp / "posembed.safetensors"), "pickle": str(tmp / "lm.pt"),
                                      "refs": refs, "cases": CASES, "out": str(folder)}))
        status, log, session = torchrun(world, WORKER, config, timeout=300)
        assert status == 0, log[-6000:]
        assert left_running(session, str(config)) == []
        out[world] = {case: [json.loads((folder / f"{case}.rank{r}.json").read_text()) for r in range(world)]
                      for case in CASES if (folder / f"{case}.rank0.json").exists()}
    return out


def _ranks(runs: dict, world: int, case: str) -> list[dict]:
    results = runs[world][case]
    crashed = [r["crash"] for r in results if "crash" in r]
    assert not crashed, crashed[0]
    return results


@pytest.mark.parametrize("world", [2, 4])  # on 2 ranks the "2-D" mesh is (2, 1)
@pytest.mark.parametrize("case", CASES)
def test_each_rank_receives_exactly_its_own_regions(runs: dict, world: int, case: str) -> None:
    results = _ranks(runs, world, case)
    for r in results:
        assert r["wrong"] == [], f"rank {r['rank']}: shards differ from distribute_tensor(reference).to_local()"
        received = r["stats"][r["rank"]]["bytes_received"]
        if case.startswith("pickle"):  # rank 0 reads every tensor whole; the others read nothing
            read = r["stats"][r["rank"]]["bytes_read"]
            assert read == (r["scattered_full_bytes"] if r["rank"] == 0 else 0), (case, r["rank"])
        if r["rank"] == 0:
            assert received == 0  # it made them
        else:
            assert received == r["scattered_local_bytes"], (case, r["rank"], r["local_shapes"])
    # together the other ranks received far from the N - 1 whole copies a broadcast sends
    full = results[0]["scattered_full_bytes"]
    total = sum(r["stats"][r["rank"]]["bytes_received"] for r in results)
    assert 0 < total <= full * (world - 1) / 2


def test_uneven_empty_strided_and_replicated_regions_are_all_covered(runs: dict) -> None:
    one_d = {r["rank"]: r for r in _ranks(runs, 4, "resample")}
    assert [one_d[r]["local_shapes"]["position_embedding.weight"] for r in range(4)] == [[10, 10]] * 3 + [[7, 10]]
    assert [one_d[r]["local_shapes"]["pos_embed"] for r in range(4)] == [[1, 37, 10]] + [[0, 37, 10]] * 3
    grid = {r["rank"]: r for r in _ranks(runs, 4, "resample2d")}
    assert "_StridedShard" in grid[0]["placements"]["position_embedding.weight"]
    # pos_embed is sharded over the dp row alone: ranks 0 and 1 (dp 0) hold it whole, ranks 2 and 3 nothing
    assert [grid[r]["local_shapes"]["pos_embed"] for r in range(4)] == [[1, 37, 10], [1, 37, 10], [0, 37, 10],
                                                                         [0, 37, 10]]
    assert grid[1]["stats"][1]["bytes_received"] >= 37 * 10 * 4  # the whole pos_embed, and its rows of the other
