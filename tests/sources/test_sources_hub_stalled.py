"""A stalled, slow or busy hub, through the real huggingface_hub client, bounded by weightsurgery's own settings.

The faults are real sockets on 127.0.0.1, served by the session's hub
stand-in (``HF_ENDPOINT``): a hub that reads the request and never answers
(left to the client's own timeouts, that costs minutes per file: a 60 s
metadata timeout, six tries, backoff), a file held silent mid-transfer, a file
sent a byte at a time, a 503 asking to wait an hour. The bounds are
weightsurgery's own settings, read at each fetch, so no fresh interpreter is
needed.
"""

from __future__ import annotations

import huggingface_hub
import pytest
from safetensors.torch import save

from sources_payloads import tensors
from stalled import FullBacklog

from weightsurgery.errors import OfflineSourceError, SourceError
from weightsurgery.sources import resolve

@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_CONNECT_TIMEOUT", "0.3")
    monkeypatch.setenv("WEIGHTSURGERY_READ_TIMEOUT", "0.3")
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_RETRIES", "1")


def test_a_hub_that_accepts_and_never_answers_is_an_offline_error_naming_repo_file_and_setting(
    hub_standin, short_timeouts
) -> None:
    hub_standin.add_commit("f/silent", {"model.safetensors": save(tensors(0))})
    hub_standin.break_file("f/silent", "model.safetensors", silent=True)
    resolve_url = f"{hub_standin.url}/f/silent/resolve/main/model.safetensors"
    with pytest.raises(OfflineSourceError) as info:
        resolve("hf-hub:f/silent/model.safetensors", quiet=True)
    assert info.value.source == "hf-hub:f/silent@main/model.safetensors"
    assert (
        f"model.safetensors from f/silent@main is not in the local cache and the hub at {hub_standin.url} did not "
        "answer (the hub sent nothing for 0.3 s before answering (read timeout), on each of 2 attempts at HEAD "
        f"{resolve_url}; raise WEIGHTSURGERY_READ_TIMEOUT for a slow hub); fetch it once online" in str(info.value)
    )
    assert len(hub_standin.requested("/f/silent/")) == 2  # tried, retried once, then refused

    # the default file list: the first candidate is asked for twice, the next ones only in the cache
    with pytest.raises(OfflineSourceError, match=r"none of model.safetensors, model.safetensors.index.json.*"
                       r"raise WEIGHTSURGERY_READ_TIMEOUT for a slow hub"):
        resolve("hf-hub:f/silent", quiet=True)
    assert len(hub_standin.requested("/f/silent/")) == 4


def test_a_cached_hub_file_is_used_after_one_silent_metadata_request(hub_standin, short_timeouts) -> None:
    hub_standin.add_commit("f/quiet", {"model.safetensors": save(tensors(5))})
    with resolve("hf-hub:f/quiet", quiet=True):
        pass
    hub_standin.break_file("f/quiet", "model.safetensors", silent=True)
    before = len(hub_standin.requests)
    with resolve("hf-hub:f/quiet", quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]
    assert hub_standin.requests[before:] == [("HEAD", "/f/quiet/resolve/main/model.safetensors")]


def test_a_hub_file_that_stalls_mid_transfer_is_an_offline_error_and_a_rerun_downloads_it(
    hub_standin, short_timeouts
) -> None:
    data = save(tensors(1))
    hub_standin.add_commit("f/stall", {"model.safetensors": data})
    hub_standin.break_file("f/stall", "model.safetensors", stall_after=len(data) // 3)
    with pytest.raises(
        OfflineSourceError,
        match=rf"downloading model.safetensors from hub repo f/stall@main failed \(the hub sent nothing for 0.3 s "
        rf"after {len(data) // 3} of {len(data)} bytes \(read timeout\), on each of 2 attempts at GET .*\); "
        r"nothing usable was cached; try again .*, or raise WEIGHTSURGERY_READ_TIMEOUT",
    ) as info:
        resolve("hf-hub:f/stall", quiet=True)
    assert info.value.source == "hf-hub:f/stall@main/model.safetensors"
    assert [method for method, _ in hub_standin.requested("/f/stall/")] == ["HEAD", "GET", "GET"]
    hub_standin.fix_file("f/stall", "model.safetensors")
    with resolve("hf-hub:f/stall", quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]


def test_a_file_store_that_never_accepts_is_a_connect_timeout_naming_the_setting(hub_standin, short_timeouts) -> None:
    data = save(tensors(6))
    hub_standin.add_commit("f/cdn", {"model.safetensors": data})
    with FullBacklog() as store:  # the hub answers; the file store it redirects to (as for LFS files) never accepts
        hub_standin.break_file("f/cdn", "model.safetensors", redirect_to=f"{store.url}/blob")
        with pytest.raises(
            OfflineSourceError,
            match=r"downloading model.safetensors from hub repo f/cdn@main failed \(no connection within 0.3 s "
            rf"\(connect timeout\), on each of 2 attempts at GET {store.url}/blob\); nothing usable was cached; "
            r"try again .*, or raise WEIGHTSURGERY_CONNECT_TIMEOUT",
        ):
            resolve("hf-hub:f/cdn", quiet=True)
    assert [method for method, _ in hub_standin.requested("/f/cdn/")] == ["HEAD"]


def test_a_hub_file_sent_a_byte_at_a_time_is_stopped_at_its_deadline(hub_standin, monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_DEADLINE", "0.5")
    data = save(tensors(2))
    hub_standin.add_commit("f/drip", {"model.safetensors": data})
    hub_standin.break_file("f/drip", "model.safetensors", drip=0.02)  # never silent for a read timeout (30 s)
    with pytest.raises(
        OfflineSourceError,
        match=rf"downloading model.safetensors from hub repo f/drip@main failed \(it did not finish within its "
        rf"deadline of 0.5 s \(\d+ of {len(data)} bytes had arrived after 0\.\d s\)\); nothing usable was cached; "
        r"try again .*, or raise WEIGHTSURGERY_DOWNLOAD_DEADLINE",
    ):
        resolve("hf-hub:f/drip", quiet=True)
    assert [method for method, _ in hub_standin.requested("/f/drip/")] == ["HEAD", "GET"]


def test_a_hub_asking_to_wait_an_hour_is_refused_at_once(hub_standin) -> None:
    hub_standin.add_commit("f/later", {"model.safetensors": save(tensors(3))})
    hub_standin.break_file("f/later", "model.safetensors", busy="3600")
    with pytest.raises(
        SourceError,
        match=r"downloading model.safetensors from hub repo f/later@main stopped: the hub answered HTTP 503 and asks "
        r"to wait 3600 s \(Retry-After\), longer than the 60 s weightsurgery waits; try again after that",
    ):
        resolve("hf-hub:f/later/model.safetensors", quiet=True)
    # the first metadata request may end in the cache; the client's retry of it is where the wait is refused
    assert [method for method, _ in hub_standin.requested("/f/later/")] == ["HEAD", "HEAD"]


def test_the_users_client_factory_is_kept_and_other_hub_calls_keep_their_own_timeouts(hub_standin) -> None:
    from huggingface_hub.utils import _http

    default = _http._GLOBAL_CLIENT_FACTORY

    def mine():
        client = _http.default_client_factory()
        client.headers["X-Mine"] = "yes"
        return client

    hub_standin.add_commit("f/factory", {"model.safetensors": save(tensors(4))})
    huggingface_hub.set_client_factory(mine)
    try:
        with resolve("hf-hub:f/factory", quiet=True) as ckpt:
            assert ckpt.keys() == ["layer.bias", "layer.weight"]
        session = huggingface_hub.get_session()
        assert session.headers["X-Mine"] == "yes"  # the client weightsurgery's fetch used is the user's
        request = session.build_request("GET", f"{hub_standin.url}/static/x", timeout=7.0)
        for hook in session.event_hooks["request"]:
            hook(request)  # outside weightsurgery's fetch, its hook changes nothing
        assert request.extensions["timeout"] == {"connect": 7.0, "read": 7.0, "write": 7.0, "pool": 7.0}
        assert "trace" not in request.extensions
    finally:
        huggingface_hub.set_client_factory(default)
