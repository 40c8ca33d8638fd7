"""Hunter against a misbehaving emulator: drops, stalls, bad framing, HTTP errors.

Every test runs the in-process emulator (the ``firehose`` fixture, fresh counters
per test) and asks it afterwards, over ``/stats``, what the hunter sent: how
many requests, when, and with which ``Last-Event-ID``.  Backoff delays are
configured small (and jitter off) wherever the policy's real numbers would only
make the test slow; where a delay is the point, it is measured.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from support import get_json, wait_for
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tidehunter_tx import HTTPStatusError, Hunter
from tidehunter_tx.hunter import GaveUp
from tidehunter_tx.policy import Backoff, BackoffConfig


def ids(records: list[bytes]) -> list[int]:
    return [json.loads(r)["id"] for r in records]


def drain(q: DeferredQueue[bytes]) -> list[bytes]:
    out = list(q.pending)
    q.pending.clear()
    return out


def quick(**numbers: Any) -> Backoff:
    """The hbc policy with tiny delays and no jitter, unless told otherwise."""
    settings: dict[str, Any] = {
        "network_step": 0.01,
        "http_initial": 0.01,
        "rate_limit_initial": 0.01,
        "auth_initial": 0.01,
        "jitter": 0.0,
    }
    settings.update(numbers)
    return Backoff(BackoffConfig(**settings), random.Random(5))


async def emulator_stats(base: str) -> dict[str, Any]:
    stats: dict[str, Any] = await get_json(f"{base}/stats")
    return stats


# --- SSE: drops, resume, retry, stop ----------------------------------------------


@pytest.mark.parametrize("mid", [False, True], ids=["at-boundary", "mid-event"])
@pytest_twisted.ensureDeferred
async def test_sse_drop_every_50_of_1000_resumes_without_loss_or_repeat(
    firehose: str, mid: bool
) -> None:
    query = "format=sse&count=1000&size=60&drop_every=50"
    h = Hunter(
        f"{firehose}/firehose?{query}{'&drop_mid=1' if mid else ''}",
        framing="sse",
        reconnect=True,
        backoff=quick(),
    )
    response = await h.tide_on()
    # After event 999 the stream ends cleanly; the reconnect resumes past the
    # end and the emulator answers 204, the event-stream "stop".
    assert response is not None and response.code == 204
    assert ids(drain(h.q)) == list(range(1000))
    stats = await emulator_stats(firehose)
    assert stats["last_event_ids"] == [None, *(str(i) for i in range(49, 1000, 50))]
    assert stats["faults"] == {"drop": 19}
    status = h.status()
    assert status["reconnects_by_cause"] == {"network": 19, "ended": 1}
    assert status["count"] == 0 and status["total"] == 1000  # the run is over
    assert status["truncated"] == (19 if mid else 0)


@pytest_twisted.ensureDeferred
async def test_sse_retry_field_is_a_floor_for_the_reconnect_delay(
    firehose: str,
) -> None:
    url = f"{firehose}/firehose?format=sse&count=10&size=40&retry=300&drop_after=4"
    h = Hunter(url + "&fail_times=1", framing="sse", reconnect=True, backoff=quick())
    await h.tide_on(limit=10)
    assert ids(drain(h.q)) == list(range(10))
    stats = await emulator_stats(firehose)
    first, second = stats["request_times"]
    assert second - first >= 0.3
    assert stats["last_event_ids"] == [None, "3"]
    assert "held to SSE retry" in h.status()["last_error"]


@pytest_twisted.ensureDeferred
async def test_a_user_supplied_last_event_id_is_only_the_starting_point(
    firehose: str,
) -> None:
    h = Hunter(
        f"{firehose}/firehose?format=sse&count=30&size=40&drop_every=10",
        framing="sse",
        reconnect=True,
        backoff=quick(),
        headers={"Last-Event-ID": "4"},
    )
    await h.tide_on(limit=25)
    assert ids(drain(h.q)) == list(range(5, 30))
    stats = await emulator_stats(firehose)
    assert stats["last_event_ids"] == ["4", "9", "19"]


@pytest_twisted.ensureDeferred
async def test_headers_then_silence_is_a_stall_too(firehose: str) -> None:
    url = f"{firehose}/firehose?format=sse&count=5&size=40&stall_after=0&fail_times=1"
    h = Hunter(url, framing="sse", reconnect=True, backoff=quick(), stall_timeout=0.3)
    await h.tide_on(limit=5)
    assert ids(drain(h.q)) == list(range(5))
    assert h.status()["stalls"] == 1
    assert (await emulator_stats(firehose))["last_event_ids"] == [None, None]


@pytest_twisted.ensureDeferred
async def test_sse_204_ends_the_run_without_retrying(firehose: str) -> None:
    h = Hunter(
        f"{firehose}/firehose?format=sse&status=204",
        framing="sse",
        reconnect=True,
        backoff=quick(),
    )
    response = await h.tide_on()
    assert response is not None and response.code == 204
    assert not h.q.pending
    assert len((await emulator_stats(firehose))["request_times"]) == 1


# --- length framing ------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 53, 16384])
@pytest_twisted.ensureDeferred
async def test_length_framing_end_to_end_limit_is_exact(
    firehose: str, chunk: int
) -> None:
    h = Hunter(
        f"{firehose}/firehose?format=length&count=300&size=50&chunk={chunk}",
        framing="length",
    )
    await h.tide_on(limit=123)
    records = drain(h.q)
    assert ids(records) == list(range(123))
    assert all(len(r) == 50 for r in records)
    assert h.sc.total == 123


@pytest_twisted.ensureDeferred
async def test_bad_length_line_reconnects_and_keeps_the_records_before_it(
    firehose: str,
) -> None:
    url = f"{firehose}/firehose?format=length&count=100&size=50&bad_length_after=30"
    h = Hunter(url + "&fail_times=1", framing="length", reconnect=True, backoff=quick())
    await h.tide_on(limit=50)
    # The firehose does not resume: the new connection starts at id 0 again.
    assert ids(drain(h.q)) == list(range(30)) + list(range(20))
    status = h.status()
    assert status["reconnects_by_cause"] == {"network": 1}
    assert "bad length line" in status["last_error"]
    stats = await emulator_stats(firehose)
    assert stats["faults"] == {"bad_length": 1}
    assert len(stats["request_times"]) == 2


# --- gzip ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [5, 37, 16384])
@pytest.mark.parametrize("framing", ["sse", "length"])
@pytest_twisted.ensureDeferred
async def test_gzip_with_sse_and_length_framing_limit_is_exact(
    firehose: str, framing: str, chunk: int
) -> None:
    h = Hunter(
        f"{firehose}/firehose?format={framing}&gzip=1&count=500&size=70&chunk={chunk}",
        framing=framing,
    )
    await h.tide_on(limit=321)
    records = drain(h.q)
    assert ids(records) == list(range(321))
    assert all(len(r) == 70 for r in records)


# --- stalls, drops, broken chunking -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stall_is_detected_within_2s_and_the_sse_stream_resumes(
    firehose: str,
) -> None:
    url = f"{firehose}/firehose?format=sse&count=60&size=50&stall_after=20&stall_for=2"
    h = Hunter(
        url + "&fail_times=1",
        framing="sse",
        reconnect=True,
        backoff=quick(),
        stall_timeout=1,
    )
    await h.tide_on(limit=60)
    assert ids(drain(h.q)) == list(range(60))
    status = h.status()
    assert status["stalls"] == 1
    assert status["reconnects_by_cause"] == {"network": 1}
    stats = await emulator_stats(firehose)
    first, second = stats["request_times"]
    assert 1.0 <= second - first < 2.0
    assert stats["last_event_ids"] == [None, "19"]
    assert stats["faults"] == {"stall": 1}
    # The stalled response was released when the hunter hung up on it.
    await wait_for(lambda: h.state == "stopped")
    assert (await emulator_stats(firehose))["active"] == 0


@pytest_twisted.ensureDeferred
async def test_dropped_lines_stream_reconnects_and_the_limit_stays_exact(
    firehose: str,
) -> None:
    url = f"{firehose}/firehose?count=30&size=40&drop_after=10&drop_mid=1&fail_times=1"
    h = Hunter(url, reconnect=True, backoff=quick())
    await h.tide_on(limit=35)
    assert ids(drain(h.q)) == list(range(10)) + list(range(25))
    status = h.status()
    assert status["reconnects_by_cause"] == {"network": 1}
    assert status["truncated"] == 1  # half of record 10, never queued
    assert h.sc.total == 35


@pytest_twisted.ensureDeferred
async def test_malformed_chunking_reconnects_and_keeps_the_records_before(
    firehose: str,
) -> None:
    url = f"{firehose}/firehose?count=100&size=50&drop_after=25&malformed=1"
    h = Hunter(url + "&fail_times=1", reconnect=True, backoff=quick())
    await h.tide_on(limit=40)
    assert ids(drain(h.q)) == list(range(25)) + list(range(15))
    status = h.status()
    assert status["reconnects_by_cause"] == {"network": 1}
    assert "MalformedChunkedData" in status["last_error"]
    assert (await emulator_stats(firehose))["faults"] == {"malformed": 1}


# --- HTTP errors ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rate_limited_420_waits_for_retry_after(firehose: str) -> None:
    url = f"{firehose}/firehose?count=5&size=40&status=420&retry_after=3"
    # The policy's own delay is tiny: only Retry-After can hold the retry back.
    h = Hunter(url + "&fail_times=1", reconnect=True, backoff=quick())
    await h.tide_on(limit=5)
    assert ids(drain(h.q)) == list(range(5))
    stats = await emulator_stats(firehose)
    first, second = stats["request_times"]
    assert 3.0 <= second - first < 4.5
    status = h.status()
    assert status["reconnects_by_cause"] == {"rate_limited": 1}
    assert status["last_error"].startswith("HTTP 420: retry in 3.0 s")
    assert "held to Retry-After" in status["last_error"]


@pytest_twisted.ensureDeferred
async def test_server_errors_then_success(firehose: str) -> None:
    h = Hunter(
        f"{firehose}/firehose?count=5&size=40&status=503&fail_times=2",
        reconnect=True,
        backoff=quick(),
    )
    await h.tide_on(limit=5)
    assert ids(drain(h.q)) == list(range(5))
    assert h.status()["reconnects_by_cause"] == {"http_5xx": 2}
    assert len((await emulator_stats(firehose))["request_times"]) == 3


@pytest_twisted.ensureDeferred
async def test_404_is_fatal_at_once_after_one_request(firehose: str) -> None:
    h = Hunter(f"{firehose}/firehose?status=404", reconnect=True, backoff=quick())
    started = time.monotonic()
    with pytest.raises(GaveUp) as caught:
        await h.tide_on()
    assert time.monotonic() - started < 1.0
    error = caught.value.error
    assert isinstance(error, HTTPStatusError) and error.code == 404
    assert h.status()["last_error"] == (
        'HTTP 404 is fatal; the server said: {"error":"Not Found","id":0}'
        ' {"error":"Not Found","id":1} {"error":"Not Found","id":2}'
    )
    assert h.status()["reconnects"] == 0
    assert not h.q.pending
    assert len((await emulator_stats(firehose))["request_times"]) == 1


@pytest_twisted.ensureDeferred
async def test_401_gives_up_after_5_retries(firehose: str) -> None:
    # auth_max_attempts=5: failures 1..5 are retried, the 6th gives up, so the
    # server sees the first request and five retries.
    h = Hunter(
        f"{firehose}/firehose?status=401",
        reconnect=True,
        backoff=quick(auth_max_attempts=5),
    )
    with pytest.raises(GaveUp, match="giving up after 5 attempts") as caught:
        await h.tide_on()
    error = caught.value.error
    assert isinstance(error, HTTPStatusError) and error.code == 401
    status = h.status()
    assert status["last_error"].startswith(
        'HTTP 401: giving up after 5 attempts; the server said: {"error":"Unauthorized"'
    )
    assert status["reconnects_by_cause"] == {"auth": 5}
    assert not h.q.pending
    stats = await emulator_stats(firehose)
    assert len(stats["request_times"]) == 6
    assert stats["faults"] == {"status": 6}


# --- an error answer whose body never ends --------------------------------------


class EndlessError(Resource):
    """Answers 503 with the start of an error body, and never finishes it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.open: set[Request] = set()

    def render_GET(self, request: Request) -> int:
        self.requests += 1
        self.open.add(request)
        request.notifyFinish().addBoth(lambda _: self.open.discard(request))
        request.setResponseCode(503)
        request.write(b'{"error": "busy"}\n')
        return NOT_DONE_YET

    def release(self) -> None:
        """End the error bodies still open, so a stuck hunter can go on."""
        for request in list(self.open):
            request.finish()


@pytest.fixture
def endless_error() -> Iterator[tuple[str, EndlessError]]:
    resource = EndlessError()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}/", resource
    finally:
        resource.release()
        pytest_twisted.blockon(port.stopListening())


async def _settle(run: Any) -> None:
    """Let a run the test is done with end, whatever its outcome."""
    run.addErrback(lambda _: None)
    await wait_for(lambda: run.called, timeout=5)


@pytest_twisted.ensureDeferred
async def test_tide_off_ends_a_run_stuck_reading_an_error_body(
    endless_error: tuple[str, EndlessError],
) -> None:
    url, resource = endless_error
    h = Hunter(url, reconnect=True, backoff=quick())
    run = h.tide_on()
    try:
        await wait_for(lambda: resource.requests == 1)
        h.tide_off()
        await wait_for(lambda: run.called, timeout=1)
    finally:
        resource.release()
        await _settle(run)


@pytest_twisted.ensureDeferred
async def test_a_hung_error_body_is_judged_stalled_and_retried(
    endless_error: tuple[str, EndlessError],
) -> None:
    url, resource = endless_error
    h = Hunter(url, reconnect=True, backoff=quick(), stall_timeout=0.3)
    run = h.tide_on()
    try:
        await wait_for(lambda: resource.requests >= 2, timeout=2)
    finally:
        h.tide_off()
        resource.release()
        await _settle(run)


@pytest_twisted.ensureDeferred
async def test_a_finite_endpoint_is_not_hammered(firehose: str) -> None:
    # /stream/5 ends after 5 records: with no limit reached, the hunter
    # reconnects, but never at once and each time later (0.2 s, then 0.4 s).
    config = BackoffConfig(jitter=0.0, short_initial=0.2)
    h = Hunter(f"{firehose}/stream/5", reconnect=True, backoff=Backoff(config))
    started = time.monotonic()
    await h.tide_on(limit=15)
    assert time.monotonic() - started >= 0.6
    assert h.stats.reconnects_by_cause == {"ended": 2}
    assert "ended within 10.0 s of opening, 2 in a row" in h.stats.last_error
