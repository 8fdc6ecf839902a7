"""Bounded downloads: real stalled sockets on 127.0.0.1, real 503s, real connections closed mid-file."""

from __future__ import annotations

import time

import pytest
from safetensors.torch import save

from sources_payloads import tensors
from stalled import FullBacklog, StalledServer

from weightsurgery.errors import CorruptCheckpointError, OfflineSourceError, SourceError, SourceSpecError
from weightsurgery.sources import resolve
from weightsurgery.sources._download import DownloadPolicy
from weightsurgery.sources.url import cache_path


@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_CONNECT_TIMEOUT", "0.3")
    monkeypatch.setenv("WEIGHTSURGERY_READ_TIMEOUT", "0.3")
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_RETRIES", "1")


def refused(url: str, error: type[Exception], match: str) -> None:
    """Resolving ``url`` raises ``error`` matching ``match``, and leaves nothing in the cache."""
    with pytest.raises(error, match=match):
        resolve(url, quiet=True)
    entry = cache_path(url)
    assert not entry.exists()
    assert not [p.name for p in entry.parent.iterdir() if p.name.startswith(".weightsurgery-download")]


@pytest.mark.parametrize(
    ("server_type", "accepted", "failure"),
    [
        (StalledServer, 2, r"cannot download {url} \(the server sent nothing for 0.3 s before answering \(read timeout\)"),
        (FullBacklog, 0, r"cannot reach {url} \(no connection within 0.3 s \(connect timeout\)"),
    ],
    ids=["accepts-then-silent", "never-accepts"],
)
def test_a_server_that_never_answers_times_out_and_is_retried(short_timeouts, server_type, accepted, failure) -> None:
    with server_type() as server:
        url = f"{server.url}/silent.safetensors"
        variable = "READ" if "read timeout" in failure else "CONNECT"
        match = failure.format(url=url) + rf", on each of 2 attempts\) and it is not cached at .*WEIGHTSURGERY_{variable}_TIMEOUT"
        refused(url, OfflineSourceError, match)
        assert server.accepted == accepted


def test_a_server_that_stalls_mid_file_times_out(short_timeouts) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    with StalledServer(head + b"x" * 10) as server:
        url = f"{server.url}/midway.pth"
        refused(url, OfflineSourceError, r"the server sent nothing for 0.3 s after 10 bytes \(read timeout\)")
        assert server.accepted == 2


def test_a_503_is_retried_and_the_download_then_succeeds(hub_standin) -> None:
    url = hub_standin.add_static("busy-once.safetensors", save(tensors(0)), fail_first=2)
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]
    assert len(hub_standin.requested("/static/busy-once.safetensors")) == 3


def test_a_503_on_every_attempt_names_the_url(hub_standin, monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_RETRIES", "2")
    url = hub_standin.add_static("busy.safetensors", save(tensors(1)), fail_first=10)
    refused(url, SourceError, rf"{url} answered HTTP 503 \(Service Unavailable\) on each of 3 attempts")
    assert len(hub_standin.requested("/static/busy.safetensors")) == 3


def test_a_404_is_not_retried(hub_standin) -> None:
    url = f"{hub_standin.url}/static/never-there.pth"
    with pytest.raises(SourceError, match=r"answered HTTP 404"):
        resolve(url, quiet=True)
    assert len(hub_standin.requested("/static/never-there.pth")) == 1


def test_a_connection_cut_mid_file_once_is_retried(hub_standin) -> None:
    data = save(tensors(2))
    url = hub_standin.add_static("cut-once.safetensors", data, cut_after=len(data) // 2, times=1)
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]
    assert len(hub_standin.requested("/static/cut-once.safetensors")) == 2


def test_a_connection_cut_mid_file_every_time_is_refused_with_the_byte_counts(hub_standin) -> None:
    data = save(tensors(3))
    url = hub_standin.add_static("cut-always.safetensors", data, cut_after=40)
    refused(
        url,
        CorruptCheckpointError,
        rf"the download of {url} is not a whole checkpoint \(the connection closed after 40 of {len(data)} "
        r"bytes, on each of 4 attempts\); nothing was cached",
    )


def test_a_server_that_sends_a_byte_at_a_time_is_stopped_at_the_deadline(hub_standin, monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_DEADLINE", "0.5")
    data = save(tensors(5))
    url = hub_standin.add_static("drip.safetensors", data, drip=0.02)  # never silent for a read timeout (30 s)
    refused(
        url,
        OfflineSourceError,
        rf"cannot download {url}: it did not finish within its deadline of 0.5 s \(\d+ of {len(data)} bytes had "
        r"arrived after 0\.\d s, on attempt 1\); nothing was cached at .*; raise WEIGHTSURGERY_DOWNLOAD_DEADLINE",
    )
    assert len(hub_standin.requested("/static/drip.safetensors")) == 1  # the deadline is for all attempts


def test_a_retry_after_is_waited_for(hub_standin) -> None:
    url = hub_standin.add_static("later.safetensors", save(tensors(6)), fail_first=1, retry_after="1")
    started = time.monotonic()
    with resolve(url, quiet=True) as ckpt:
        assert ckpt.keys() == ["layer.bias", "layer.weight"]
    assert time.monotonic() - started >= 1.0  # not the 10 ms backoff of this suite (conftest)
    assert len(hub_standin.requested("/static/later.safetensors")) == 2


def test_a_retry_after_beyond_the_cap_ends_the_download_at_once(hub_standin) -> None:
    url = hub_standin.add_static("much-later.safetensors", save(tensors(7)), fail_first=5, retry_after="3600")
    refused(
        url,
        SourceError,
        rf"{url} answered HTTP 503 \(Service Unavailable\) and asks to wait 3600 s \(Retry-After\), longer than the "
        r"60 s weightsurgery waits; nothing was cached at .*; try again after that",
    )
    assert len(hub_standin.requested("/static/much-later.safetensors")) == 1


def test_the_policy_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("WEIGHTSURGERY_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_RETRIES", "0")
    monkeypatch.setenv("WEIGHTSURGERY_DOWNLOAD_DEADLINE", "90")
    expected = DownloadPolicy(read_timeout=2.5, retries=0, backoff=0.01, deadline=90.0)  # conftest's backoff
    assert DownloadPolicy.from_env() == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEIGHTSURGERY_READ_TIMEOUT", "0"),
        ("WEIGHTSURGERY_READ_TIMEOUT", "inf"),
        ("WEIGHTSURGERY_CONNECT_TIMEOUT", "soon"),
        ("WEIGHTSURGERY_DOWNLOAD_RETRIES", "-1"),
        ("WEIGHTSURGERY_DOWNLOAD_DEADLINE", "0"),
    ],
)
def test_a_bad_setting_names_the_variable(monkeypatch, hub_standin, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SourceSpecError, match=rf"{name}='{value}' is not valid; set it to .*, or unset it"):
        resolve(hub_standin.add_static(f"setting-{name}-{value}.safetensors", save(tensors(4))), quiet=True)
