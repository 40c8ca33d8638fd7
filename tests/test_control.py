"""The control protocol in-process: the Python API other Twisted programs use."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from support import wait_for
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from tidehunter_tx import Hunter
from tidehunter_tx.control import (
    ControlClient,
    ControlError,
    ControlFactory,
    HunterController,
    client_endpoint,
)


async def serve(hunter: Hunter, run, tmp_path, secret: bytes | None = None):
    endpoint = f"unix:{tmp_path / 'c.sock'}:mode=600"
    factory = ControlFactory(HunterController(hunter, run), secret)
    port = await serverFromString(reactor, endpoint).listen(factory)
    return endpoint, port, factory


@pytest_twisted.ensureDeferred
async def test_client_reads_counts_pauses_and_stops(firehose, tmp_path):
    h = Hunter(f"{firehose}/firehose?rate=2000&size=60")
    run = h.tide_on()
    endpoint, port, factory = await serve(h, run, tmp_path)
    client = await ControlClient.connect(endpoint)
    try:
        await wait_for(lambda: h.sc.count > 20)
        status = await client.status()
        assert status["state"] == "streaming"
        assert status["count"] >= 20
        assert status["reconnects_by_cause"] == {}

        assert await client.pause() == "paused"
        assert await client.resume() == "streaming"
        reply = await client.set_limit(1_000_000)
        assert reply["limit"] == 1_000_000

        h.q.pending.clear()
        count = await client.stop()
        await run
        assert count == h.delivered > 20
    finally:
        client.close()
        await factory.close_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_secret_is_required_and_checked(firehose, tmp_path):
    h = Hunter(f"{firehose}/firehose?rate=100&size=60")
    run = h.tide_on()
    endpoint, port, factory = await serve(h, run, tmp_path, secret=b"s3cret")
    try:
        anonymous = await ControlClient.connect(endpoint)
        with pytest.raises(ControlError, match="wants a secret"):
            await anonymous.status()
        anonymous.close()

        with pytest.raises(ControlError, match="wrong secret"):
            await ControlClient.connect(endpoint, secret="guess")

        trusted = await ControlClient.connect(endpoint, secret="s3cret")
        status = await trusted.status()
        assert "s3cret" not in json.dumps(status)
        await trusted.stop()
        trusted.close()
        await run
    finally:
        await factory.close_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="no daemon at"):
        await ControlClient.connect(f"unix:{tmp_path / 'missing.sock'}")


@pytest.mark.parametrize(
    ("server", "client"),
    [
        ("unix:th.sock:mode=600", "unix:path=th.sock"),
        ("unix:/run/th.sock:mode=600:lockfile=1", "unix:path=/run/th.sock"),
        ("unix:path=th.sock", "unix:path=th.sock"),
        ("tcp:8750", "tcp:host=127.0.0.1:port=8750"),
        ("tcp:8750:interface=127.0.0.1", "tcp:host=127.0.0.1:port=8750"),
        ("tcp:port=8750:interface=0.0.0.0", "tcp:host=127.0.0.1:port=8750"),
        ("tcp:host=10.0.0.1:port=1", "tcp:host=10.0.0.1:port=1"),
        ("tcp:127.0.0.1:8750", "tcp:host=127.0.0.1:port=8750"),
        ("tcp6:\\:\\:1:8750", "tcp6:host=\\:\\:1:port=8750"),
    ],
)
def test_server_endpoint_strings_translate_to_client_form(server, client):
    assert client_endpoint(server) == client


@pytest.mark.parametrize("endpoint", ["tcp:127.0.0.1:http", "tcp:99999", "tcp:x:0"])
def test_a_bad_port_is_a_clear_error(endpoint):
    with pytest.raises(ControlError, match="not a port"):
        client_endpoint(endpoint)


def test_unsupported_endpoint_is_a_clear_error():
    with pytest.raises(ControlError, match="unsupported control endpoint"):
        client_endpoint("ssl:443")
