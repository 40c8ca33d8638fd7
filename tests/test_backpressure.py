"""Backpressure: a consumer that reads nothing stalls the server, not our memory."""

from __future__ import annotations

import json
import time

import pytest_twisted
from support import get_json, rss_bytes, sleep, wait_for
from twisted.internet.defer import DeferredQueue

from tidehunter_tx import Hunter

MB = 1 << 20
STREAM = "firehose?count=2500000&size=200"  # 500 MB if nobody pushed back


async def written_when_stalled(stats_url: str, timeout: float = 20.0) -> int:
    """Wait until the emulator is paused and its byte count holds still."""
    deadline = time.monotonic() + timeout
    last, steady = -1, 0
    while time.monotonic() < deadline:
        stats = await get_json(stats_url)
        if stats["paused_now"] >= 1 and stats["bytes_written"] == last:
            steady += 1
            if steady >= 5:
                return int(last)
        else:
            steady = 0
        last = stats["bytes_written"]
        await sleep(0.1)
    raise AssertionError(f"the emulator never stalled: {stats}")


@pytest_twisted.ensureDeferred
async def test_idle_consumer_stalls_emulator_and_memory_stays_bounded(
    firehose_process,
):
    rss_before = rss_bytes()
    h = Hunter(f"{firehose_process}/{STREAM}")
    run = h.tide_on()
    await wait_for(lambda: h.stats.pauses >= 1)
    written = await written_when_stalled(f"{firehose_process}/stats")

    # The server stalled after the queue's worth plus socket buffers, far
    # short of the 500 MB it had to send, and we hold about the queue's worth.
    assert written < 100 * MB, written
    assert len(h.q.pending) < 2 * h.sink.high_watermark  # type: ignore[attr-defined]
    assert rss_bytes() - rss_before < 64 * MB

    # Reading again resumes the stream, in order, with nothing lost.
    got = [await h.q.get() for _ in range(30_000)]
    assert [json.loads(r)["id"] for r in got] == list(range(30_000))
    assert (await get_json(f"{firehose_process}/stats"))["bytes_written"] > written
    h.tide_off()
    await run


@pytest_twisted.ensureDeferred
async def test_plain_deferred_queue_pauses_and_resumes_too(firehose_process):
    q: DeferredQueue[bytes] = DeferredQueue()
    h = Hunter(
        f"{firehose_process}/{STREAM}", q=q, high_watermark=2000, low_watermark=500
    )
    run = h.tide_on(limit=6000)
    await wait_for(lambda: h.stats.pauses >= 1)
    queued_at_pause = len(q.pending)
    assert queued_at_pause < 4000
    # Everything past what was queued at the pause came after a resume, which
    # only polling the plain queue can have triggered.
    got = [await q.get() for _ in range(6000)]
    await run
    assert [json.loads(r)["id"] for r in got] == list(range(6000))
