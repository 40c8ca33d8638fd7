"""Consuming a run: the iterators, and the original's drain-after-the-run pattern."""

from __future__ import annotations

import json

import pytest_twisted
from support import sleep, wait_for
from twisted.internet.defer import DeferredQueue

from tidehunter_tx import Hunter


def ids(records: list[bytes]) -> list[int]:
    return [json.loads(record)["id"] for record in records]


@pytest_twisted.ensureDeferred
async def test_records_iterates_every_record_of_the_run_then_ends(firehose):
    h = Hunter(f"{firehose}/firehose?size=80", high_watermark=500)
    run = h.tide_on(limit=25_000)
    got = []
    async for record in h.records():
        got.append(record)
        if len(got) % 2_000 == 0:
            await sleep(0.01)  # a consumer slower than the feed now and then
    await run
    assert ids(got) == list(range(25_000))
    assert h.stats.pauses >= 1  # it paused above 500 and the iterator resumed it


@pytest_twisted.ensureDeferred
async def test_batches_are_bounded_lists_in_order(firehose):
    h = Hunter(f"{firehose}/firehose?size=80", high_watermark=2_000)
    run = h.tide_on(limit=30_000)
    sizes, got = [], []
    async for batch in h.batches(max_batch=1_000):
        sizes.append(len(batch))
        got.extend(batch)
    await run
    assert ids(got) == list(range(30_000))
    assert max(sizes) <= 1_000


@pytest_twisted.ensureDeferred
async def test_iterators_work_with_any_deferred_queue(firehose):
    h = Hunter(f"{firehose}/firehose?size=80&rate=5000", q=DeferredQueue())
    run = h.tide_on(limit=300)
    got = [record async for record in h.records()]
    await run
    assert ids(got) == list(range(300))


@pytest_twisted.ensureDeferred
async def test_an_iterator_started_after_the_run_takes_what_is_queued(firehose):
    h = Hunter(f"{firehose}/firehose?size=80")
    await h.tide_on(limit=40)
    assert ids([record async for record in h.records()]) == list(range(40))
    assert [batch async for batch in h.batches()] == []


@pytest_twisted.ensureDeferred
async def test_drain_after_tide_on_never_deadlocks_above_the_high_watermark(firehose):
    # tidehunter 1.0.1's Example 1: run to the limit, then read the queue.
    h = Hunter(f"{firehose}/firehose?size=80")
    await h.tide_on(limit=30_000)
    got = []
    while h.q.pending:
        got.append(await h.q.get())
    assert ids(got) == list(range(30_000))


@pytest_twisted.ensureDeferred
async def test_taking_straight_from_pending_resumes_a_paused_stream(firehose):
    h = Hunter(f"{firehose}/firehose?size=80", high_watermark=1_000)
    run = h.tide_on(limit=5_000)
    got: list[bytes] = []
    while len(got) < 5_000:
        await wait_for(lambda: bool(h.q.pending) or not h.running)
        while h.q.pending:
            got.append(h.q.pending.popleft())
    await run
    assert ids(got) == list(range(5_000))
