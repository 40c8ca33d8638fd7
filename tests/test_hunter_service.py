"""HunterService inside someone else's application: no reactor stop, no signals."""

from __future__ import annotations

import json
import signal

import pytest_twisted
from support import wait_for
from twisted.application.service import MultiService

from tidehunter_tx import FileSink, Hunter, HunterService


@pytest_twisted.ensureDeferred
async def test_a_finished_run_leaves_the_reactor_and_sigterm_alone(firehose, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    app = MultiService()
    path = tmp_path / "out.jsonl"
    hunting = HunterService(
        Hunter(f"{firehose}/firehose?size=60", sink=FileSink.open(str(path))),
        limit=250,
    )
    hunting.setServiceParent(app)
    app.startService()
    result = await hunting.whenDone()
    assert (result.ok, result.delivered) == (True, 250)
    # The file is flushed and closed by then, and our host is still running.
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(250))
    assert signal.getsignal(signal.SIGTERM) is before
    await app.stopService()
    assert (await hunting.whenDone()) is result


@pytest_twisted.ensureDeferred
async def test_stop_service_halts_and_fires_once_the_sink_is_flushed(
    firehose, tmp_path
):
    path = tmp_path / "out.jsonl"
    hunter = Hunter(
        f"{firehose}/firehose?size=60&rate=2000", sink=FileSink.open(str(path))
    )
    hunting = HunterService(hunter)
    hunting.startService()
    await wait_for(lambda: hunter.delivered >= 50)
    await hunting.stopService()
    assert not hunter.running
    lines = path.read_bytes().splitlines()
    assert len(lines) == hunter.delivered
    assert [json.loads(line)["id"] for line in lines] == list(range(len(lines)))


@pytest_twisted.ensureDeferred
async def test_when_done_carries_the_failure(firehose):
    hunting = HunterService(Hunter(f"{firehose}/status/404"))
    hunting.startService()
    result = await hunting.whenDone()
    assert not result.ok
    assert "404" in str(result.error)
