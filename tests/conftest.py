"""Shared test setup: a private cache and a local hub stand-in, so no test touches the network.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once,
when ``huggingface_hub.constants`` is first imported (``import timm`` does it),
so everything below runs at import time, before any test module imports them.
Outgoing traffic is sent to a closed local port through the proxy variables;
only 127.0.0.1 is reached directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubstandin import HubStandIn

SESSION_DIR = Path(tempfile.mkdtemp(prefix="weightsurgery-tests-"))
HUB = HubStandIn()

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "HF_HOME": str(SESSION_DIR / "hf"),
        "TORCH_HOME": str(SESSION_DIR / "torch"),
        "HF_ENDPOINT": HUB.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "WEIGHTSURGERY_RETRY_BACKOFF": "0.01",  # download retries wait 10 ms, 20 ms... instead of 1 s, 2 s...
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }
)

if "huggingface_hub.constants" in sys.modules:  # imported before this file: the settings above came too late
    raise pytest.UsageError(
        "huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT; "
        "a plugin or an earlier conftest imports it (or timm) at startup"
    )


# The Ctrl-C tests (tests/apply/test_apply_commit.py, the fault property, tests/cli's paused runs)
# need SIGINT to raise KeyboardInterrupt, here and in the processes they start. A shell that
# starts the suite in the background without job control (`pytest &`, nohup, some CI runners)
# sets SIGINT to "ignore", and an ignored signal stays ignored in every child: put Python's
# own handler back, as an interactive run has it (children then start with the default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

def pytest_unconfigure(config: pytest.Config) -> None:
    HUB.close()
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_standin() -> Iterator[HubStandIn]:
    """The session's hub stand-in (``HF_ENDPOINT`` points at it); also serves ``/static/`` files."""
    yield HUB


@pytest.fixture(scope="session")
def torch_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where URL and torchvision downloads are cached."""
    path = SESSION_DIR / "torch" / "hub" / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path
