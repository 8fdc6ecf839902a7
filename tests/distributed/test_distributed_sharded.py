"""Transfers into FSDP2 / DTensor models on real gloo ranks (torchrun on 127.0.0.1, 2 and 4 ranks).

One ``torchrun --standalone`` launch per world size runs every case (each launch
costs seconds of interpreter start-up); the workers (``sharded_worker.py``)
write what they found, and the tests here assert it. Each launch runs under a
timeout, in its own session, so a hang fails the test and no process is left.

The oracle is torch's own: a rank's local shard must equal
``distribute_tensor(reference, mesh, placements).to_local()`` bit for bit, and
``full_tensor()`` must equal the single-process transfer (``reference``) made
here with the same call.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from launch import left_running, torchrun
from safetensors.torch import save_file
from sharded_models import Classifier, TinyLM, pretrained

from weightsurgery import transfer

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
WORKER = HERE / "sharded_worker.py"
LM_INIT = {"adapter.*": "normal(std=0.02)"}
CASES = ["fsdp_meta", "fsdp_real", "pickle", "dcp", "tp", "mesh2d", "fused", "head", "hf_llama", "hf_factory",
         "missing", "corrupt", "raises", "seeds", "dry_run"]
GOOD = ["fsdp_meta", "fsdp_real", "pickle", "dcp", "tp", "mesh2d", "fused", "head", "hf_llama", "hf_factory"]
LAUNCH_TIMEOUT = 300


def _sources(tmp: Path) -> dict[str, str]:
    lm = pretrained(TinyLM(tied=False))
    keys = list(lm)
    half = len(keys) // 2
    shards = {"lm-00001-of-00002.safetensors": keys[:half], "lm-00002-of-00002.safetensors": keys[half:]}
    for name, part in shards.items():
        save_file({k: lm[k] for k in part}, tmp / name)
    index = tmp / "lm.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: name for name, part in shards.items() for k in part}}))
    torch.save(lm, tmp / "lm.pt")
    save_file({k: v for k, v in lm.items() if k != "blocks.1.up.weight"}, tmp / "lm-missing.safetensors")
    save_file(lm, tmp / "lm-whole.safetensors")
    data = (tmp / "lm-whole.safetensors").read_bytes()
    (tmp / "lm-corrupt.safetensors").write_bytes(data[: len(data) - 1000])  # a shard cut short
    save_file(pretrained(Classifier(10), seed=3), tmp / "classifier.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no_dist's deprecation note
        dcp.save({"model": lm}, checkpoint_id=tmp / "lm-dcp", no_dist=True)  # an app state: model. prefix
    return {"index": str(index), "pickle": str(tmp / "lm.pt"), "missing": str(tmp / "lm-missing.safetensors"),
            "corrupt": str(tmp / "lm-corrupt.safetensors"), "classifier": str(tmp / "classifier.safetensors"),
            "dcp": str(tmp / "lm-dcp"), "llama": str(_llama(tmp / "llama"))}


def _llama(folder: Path) -> Path:
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _references(src: dict[str, str], tmp: Path) -> dict[str, str]:
    """The single-process transfer of each good case, with the same call the ranks make."""
    def on_meta(factory):
        with torch.device("meta"):
            return factory()

    made = {
        "fsdp_meta": transfer(src["index"], on_meta(lambda: TinyLM(extra=True)), init=LM_INIT, seed=0),
        "pickle": transfer(src["pickle"], on_meta(lambda: TinyLM(extra=True)), init=LM_INIT, seed=0),
        "fused": transfer(src["index"], on_meta(lambda: TinyLM(fused=True, tied=False))),
        "head": transfer(src["classifier"], on_meta(lambda: Classifier(5)), classes=[7, 2, 9, 0], seed=0),
        "tp": transfer(src["index"], on_meta(lambda: TinyLM(tied=False))),
    }
    made["mesh2d"] = made["tp"]
    made["dcp"] = made["fsdp_meta"]
    import transformers

    llama = transformers.LlamaForCausalLM.from_pretrained(src["llama"]).eval()
    made["hf_llama"] = transfer(src["llama"], llama)  # itself: the reference state
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        extra = {"inv_freq": llama.model.rotary_emb.inv_freq, "ids": ids, "logits": llama(ids).logits}
    torch.manual_seed(1)
    made["fsdp_real"] = transfer(src["index"], TinyLM(extra=True), init=LM_INIT, seed=0)
    refs = {}
    for case, report in made.items():
        refs[case] = str(tmp / f"ref-{case}.pt")
        torch.save(report.model.state_dict(), refs[case])
    refs["hf_llama_extra"] = str(tmp / "ref-hf_llama-extra.pt")
    torch.save(extra, refs["hf_llama_extra"])
    return refs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, list[dict]]]:
    """``{world: {case: [result of rank 0, rank 1, ...]}}`` from one launch per world size."""
    tmp = tmp_path_factory.mktemp("sharded")
    src = _sources(tmp)
    refs = _references(src, tmp)
    out: dict[int, dict[str, list[dict]]] = {}
    for world in (2, 4):
        folder = tmp / f"world{world}"
        folder.mkdir()
        config = tmp / f"config{world}.json"
        config.write_text(json.dumps({**src, "refs": refs, "cases": CASES, "out": str(folder), "timeout": 60}))
        _launch(world, config)
        out[world] = {
            case: [json.loads((folder / f"{case}.rank{r}.json").read_text()) for r in range(world)]
            for case in CASES if (folder / f"{case}.rank0.json").exists()
        }
    return out


def _launch(world: int, config: Path) -> None:
    try:
        status, log, session = torchrun(world, WORKER, config, timeout=LAUNCH_TIMEOUT)
    except TimeoutError as exc:
        pytest.fail(str(exc))
    assert status == 0, log[-6000:]
    assert left_running(session, str(config)) == []  # every rank and the launcher are gone


def _ranks(runs: dict, world: int, case: str) -> list[dict]:
    results = runs[world][case]
    crashed = [r["crash"] for r in results if "crash" in r]
    assert not crashed, crashed[0]
    return results


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", GOOD)
def test_local_shards_and_full_model_match(runs: dict, world: int, case: str) -> None:
    if case == "mesh2d" and world == 2:
        pytest.skip("a 2-D mesh needs 4 ranks")
    if case in ("hf_llama", "hf_factory") and world == 4:
        pytest.skip("the transformers model runs on 2 ranks only (each rank imports transformers)")
    results = _ranks(runs, world, case)
    for r in results:
        assert "error" not in r, r["error"]
        assert r["placements_kept"], r["placements"]  # still DTensors, with the same placements
        assert r["local_wrong"] == [], f"rank {r['rank']}: local shards differ from the checkpoint's slices"
        assert r["full_wrong"] == [], f"rank {r['rank']}: full_tensor() differs from the single-process transfer"
        assert r["on_meta"] == []
    # every rank returns the same report, with every rank's figures
    assert len({r["report_json"] for r in results}) == 1
    ranks = results[0]["report"]["ranks"]
    assert [s["rank"] for s in ranks] == list(range(world))


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_reads_only_its_own_bytes(runs: dict, world: int) -> None:
    """The readers' own counters: exactly the bytes of the rank's loaded shards, never a broadcast."""
    for case in ("fsdp_meta", "fsdp_real", "tp", "mesh2d", "fused"):
        if case not in runs[world]:
            continue
        results = _ranks(runs, world, case)
        for r in results:
            stats = r["report"]["ranks"][r["rank"]]
            assert stats["bytes_received"] == 0, case
            if case != "fused":
                assert stats["bytes_read"] == r["loaded_local_bytes"], (case, r["rank"])
    # FSDP2: at most 1/N of the tensor bytes (torch.chunk rounds the row count up); headers are not tensor bytes
    source = TinyLM(tied=False).state_dict()
    bound = sum(-(-v.shape[0] // world) * v[0].numel() * v.element_size() for k, v in source.items()
                if k != "head.weight")  # the target's head is tied to its embedding: one tensor, read once
    total = sum(v.numel() * v.element_size() for v in source.values())
    for r in _ranks(runs, world, "fsdp_meta"):
        assert r["report"]["ranks"][r["rank"]]["bytes_read"] <= bound < total / world * 1.1


def test_pickle_source_is_read_on_rank_0_and_scattered(runs: dict) -> None:
    for world in (2, 4):
        stats = _ranks(runs, world, "pickle")[0]["report"]["ranks"]
        total = sum(v.numel() * v.element_size() for v in TinyLM(tied=False).state_dict().values())
        assert 0 < stats[0]["bytes_read"] <= total  # rank 0 read the tensors whole, the others nothing
        assert [s["bytes_read"] for s in stats[1:]] == [0] * (world - 1)
        assert stats[0]["bytes_received"] == 0 and all(s["bytes_received"] > 0 for s in stats[1:])


def test_tp_and_2d_placements_are_what_torch_made(runs: dict) -> None:
    tp = _ranks(runs, 2, "tp")[0]["placements"]
    assert tp["blocks.0.o.weight"][1] == "(Shard(dim=1),)" and tp["blocks.0.q.weight"][1] == "(Shard(dim=0),)"
    assert tp["norm.weight"][1] == "(Replicate(),)" and tp["norm.bias"][0] == "Parameter"
    grid = _ranks(runs, 4, "mesh2d")[0]["placements"]
    assert grid["blocks.0.o.weight"][1] == "(Shard(dim=0), Shard(dim=1))"
    assert "_StridedShard" in grid["blocks.0.q.weight"][1]


@pytest.mark.parametrize("case", ["hf_llama", "hf_factory"])
def test_a_transformers_model_on_meta_gets_its_rotary_buffers_and_computes_the_same_logits(runs: dict,
                                                                                          case: str) -> None:
    """Built on meta and sharded by the caller, or built by the ``transformers:`` factory, sharded by parallelize=."""
    for r in _ranks(runs, 2, case):
        if case == "hf_factory":
            assert r["sharded"] == len(r["placements"]) > 0  # report.model: every parameter a DTensor shard
        assert r["inv_freq_equal"], f"rank {r['rank']}: rotary inv_freq not recomputed by the model's own init"
        assert r["logits_close"], f"rank {r['rank']}: the sharded model's logits differ from the original's"


def test_tied_weights_stay_tied(runs: dict) -> None:
    for world in (2, 4):
        assert all(r["tied"] for r in _ranks(runs, world, "fsdp_meta"))


def test_seeded_leftover_is_the_same_for_any_world_size(runs: dict) -> None:
    # the full tensors equal the single-process transfer on 2 and on 4 ranks (test above), so they equal each other
    for world in (2, 4):
        report = _ranks(runs, world, "fsdp_meta")[0]["report"]
        assert report["initialized"] == ["adapter.weight", "adapter.bias"]
        assert {r["init_spec"] for r in report["records"] if r["target"].startswith("adapter.")} == {"normal(std=0.02)"}


@pytest.mark.parametrize("world", [2, 4])
def test_faults_end_every_rank_with_the_same_error(runs: dict, world: int) -> None:
    expect = {"missing": ("plan", "blocks.1.up.weight"), "corrupt": ("resolve", "lm-corrupt.safetensors"),
              "raises": ("stage", "progress callback failed on the last rank"),
              "seeds": ("prepare", "(seed): rank 0 0; rank 1 1"),  # each rank passed its own seed
              "dry_run": ("prepare", "out of step")}  # the last rank plans only: it never prepares
    for case, (phase, named) in expect.items():
        results = _ranks(runs, world, case)
        errors = [r.get("error") for r in results]
        assert all(e is not None for e in errors), f"{case}: some rank did not fail: {errors}"
        assert len({json.dumps(e, sort_keys=True) for e in errors}) == 1, f"{case}: the ranks raised different errors"
        assert errors[0]["type"] == "ShardedTransferError" and errors[0]["phase"] == phase
        assert named in errors[0]["message"]
        assert all(r["untouched"] for r in results), f"{case}: a rank changed its model"


@pytest.mark.parametrize("world", [2, 4])
def test_a_transfer_read_by_range_agrees_in_two_exchanges(runs: dict, world: int) -> None:
    """Resolving, planning and preparing are compared with the stage (one all_gather), the commit with one more.

    Nothing else crosses ranks: no per-step all_reduce, no object collective, no seed unless one is drawn
    (hf_llama: its rotary buffers are recomputed with a seed drawn on rank 0, one exchange more; the
    ``transformers:`` factory of hf_factory computes them as it builds the model, so no seed is drawn).
    """
    for case in ("fsdp_meta", "fsdp_real", "tp", "mesh2d", "fused", "head", "hf_llama", "hf_factory"):
        if case not in runs[world]:
            continue
        want = {"all_gather": 3 if case == "hf_llama" else 2}
        for r in _ranks(runs, world, case):
            assert r["collectives"] == want, (case, r["rank"], r["collectives"])


@pytest.mark.parametrize("world", [2, 4])
def test_a_pickle_adds_one_flag_and_one_send_per_tensor_to_each_rank_and_nothing_else(runs: dict, world: int) -> None:
    """A source that cannot be read by range: the schedule is exchanged before the stage (one all_gather more),
    rank 0 learns the ranks' regions once (one gather_object), then per tensor one flag broadcast and one
    point-to-point send to each other rank; nothing on the ranged cases' path changes."""
    for r in _ranks(runs, world, "pickle"):
        tensors = sum(rec["status"] == "loaded" for rec in r["report"]["records"])
        sends = {"isend": tensors * (world - 1)} if r["rank"] == 0 else {"recv": tensors}
        assert tensors > 0
        assert r["collectives"] == {"all_gather": 3, "gather_object": 1, "broadcast": tensors, **sends}, r["rank"]
