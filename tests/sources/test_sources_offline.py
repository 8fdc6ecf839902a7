"""Offline mode (HF_HUB_OFFLINE=1): cached sources resolve, uncached ones fail at once.

huggingface_hub reads HF_HUB_OFFLINE at import, so each case runs in a fresh
interpreter, with its own cache and an endpoint that nothing listens on. A
failure that sat through the client's retry backoff (over 20 s per file) would
run into the subprocess timeout.

torchvision is covered by ``test_resnet``, a tiny model the script registers
in torchvision's registry (:mod:`torchvision_tiny`), seeded under the torch.hub
name that carries its hash; the real ``resnet18`` name is seeded with a file
that is not the real one, which is refused even offline.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision_tiny
from safetensors.torch import save

from weightsurgery.sources.url import cache_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLOSED = "http://127.0.0.1:9"

SCRIPT = """
import json, os, sys
sys.path.insert(0, os.environ["WS_TEST_SOURCES"])
import torchvision_tiny
torchvision_tiny.register(os.environ["WS_TINY_URL"])
from weightsurgery.sources import resolve

results = {}
for src in sys.argv[1:]:
    try:
        with resolve(src, quiet=True) as ckpt:
            results[src] = {"keys": ckpt.keys(), "revision": ckpt.origin.revision, "kind": ckpt.origin.kind.value}
    except Exception as exc:
        results[src] = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(results))
"""

TINY_STATE, TINY_DATA, TINY_NAME = torchvision_tiny.weights_file(seed=0)
CACHED_URL = f"{CLOSED}/static/cached.safetensors"
SOURCES = [
    "hf-hub:off/seeded",
    "torchvision:test_resnet",
    "torchvision:resnet18",
    CACHED_URL,
    "hf-hub:off/absent",
    "timm:resnet18.a1_in1k",
    f"{CLOSED}/static/absent.pth",
]


def seed(root: Path) -> None:
    """Lay out a hub cache and a torch cache as an offline user would have them."""
    state = {"layer.weight": torch.ones(2, 3)}
    repo = root / "hf" / "hub" / "models--off--seeded"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)  # no trailing newline, as the client writes it
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "model.safetensors").write_bytes(save(state))
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / TINY_NAME).write_bytes(TINY_DATA)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(buffer.getvalue())  # not the real file
    (checkpoints / cache_path(CACHED_URL).name).write_bytes(save(state))  # the URL's own cache entry


def run_offline(root: Path) -> dict[str, dict]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "TORCH_HOME": str(root / "torch"),
        "HF_ENDPOINT": CLOSED,
        "WS_TEST_SOURCES": str(Path(__file__).parent),
        "WS_TINY_URL": f"{CLOSED}/static/{TINY_NAME}",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *SOURCES], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("offline-seeded")
    seed(root)
    return run_offline(root)


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> dict[str, dict]:
    return run_offline(tmp_path_factory.mktemp("offline-empty"))


def test_seeded_cache_resolves_every_form(seeded) -> None:
    assert seeded["hf-hub:off/seeded"] == {"keys": ["layer.weight"], "revision": COMMIT, "kind": "hf-hub"}
    assert seeded["torchvision:test_resnet"]["kind"] == "torchvision"
    assert sorted(seeded["torchvision:test_resnet"]["keys"]) == sorted(TINY_STATE)
    assert seeded[CACHED_URL]["keys"] == ["layer.weight"]


def test_a_seeded_file_that_is_not_what_its_name_says_is_refused_offline_too(seeded) -> None:
    refused = seeded["torchvision:resnet18"]
    assert refused["error"] == "IntegrityError"
    assert "resnet18-f37072fd.pth has" in refused["message"] and "expected f37072fd" in refused["message"]


def test_uncached_sources_fail_with_an_offline_error_that_says_how_to_fetch(seeded) -> None:
    hub = seeded["hf-hub:off/absent"]
    assert hub["error"] == "OfflineSourceError"
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in hub["message"]
    assert "`hf download off/absent model.safetensors`" in hub["message"]
    assert seeded["timm:resnet18.a1_in1k"]["error"] == "OfflineSourceError"
    url = seeded[f"{CLOSED}/static/absent.pth"]
    assert url["error"] == "OfflineSourceError"
    assert "absent.pth is not cached (looked for " in url["message"] and "run once with the network" in url["message"]


def test_empty_cache_fails_every_remote_form_at_once(empty) -> None:
    assert {src: result.get("error") for src, result in empty.items()} == dict.fromkeys(SOURCES, "OfflineSourceError")
