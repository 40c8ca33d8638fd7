"""The body protocol alone: exact limits under any chunking, pause/resume, stop.

A stub transport stands in for treq's body transport here; the same behaviour
over real sockets is proved in test_hunter.py and test_backpressure.py.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support import cut
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from tidehunter_tx import (
    Ending,
    LineFramer,
    LocalGate,
    QueueSink,
    RecordQueue,
    StateCounter,
    StreamProtocol,
    StreamStats,
)


class StubTransport:
    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


def make(limit: int, high: int = 10_000, low: int = 2_500):
    q: RecordQueue[bytes] = RecordQueue()
    counter = StateCounter(limit)
    counter.start()
    protocol = StreamProtocol(
        LineFramer(),
        LocalGate(counter, QueueSink(q, high, low)),
        StreamStats(),
        Clock(),
    )
    transport = StubTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport, q, counter


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 80),
    limit=st.sampled_from([1, 5, 37, 80, 0]),
    cuts=st.lists(st.integers(0, 5_000), max_size=200),
    crlf=st.booleans(),
    keepalive_every=st.integers(0, 5),
)
def test_exactly_limit_records_for_any_chunking(n, limit, cuts, crlf, keepalive_every):
    term = b"\r\n" if crlf else b"\n"
    parts = []
    for i in range(n):
        if keepalive_every and i % keepalive_every == 0:
            parts.append(term)
        parts.append(b'{"id":%d}' % i + term)
    data = b"".join(parts)
    protocol, transport, q, counter = make(limit)
    for chunk in cut(data, cuts):
        protocol.dataReceived(chunk)
    expected = n if limit == 0 else min(n, limit)
    assert list(q.pending) == [b'{"id":%d}' % i for i in range(expected)]
    assert counter.count == expected
    # Reaching the limit closes the response; a shorter stream does not.
    assert transport.stopped == (limit > 0 and n >= limit)


def test_pauses_above_high_watermark_and_resumes_at_low():
    protocol, transport, q, _ = make(0, high=10, low=3)
    protocol.dataReceived(b"".join(b"%d\n" % i for i in range(12)))
    assert transport.paused
    for _ in range(8):
        q.get()
    assert transport.paused  # 4 left: above the low watermark
    q.get()
    assert not transport.paused


def test_user_pause_outlasts_a_drained_sink():
    protocol, transport, q, _ = make(0, high=2, low=0)
    protocol.pause("user")
    protocol.dataReceived(b"a\nb\nc\n")
    while q.pending:
        q.get()
    assert transport.paused  # the sink drained, but the user still holds it
    protocol.resume("user")
    assert not transport.paused


def test_counter_stop_closes_at_once_and_ends_as_stopped():
    protocol, transport, q, counter = make(0)
    protocol.dataReceived(b"a\n")
    counter.add_stop_listener(protocol.stop)
    counter.stop()
    assert transport.stopped
    protocol.dataReceived(b"late\n")  # bytes in flight after the stop
    protocol.connectionLost(Failure(ResponseDone()))
    outcome = protocol.done.result
    assert outcome.ending is Ending.STOPPED
    assert list(q.pending) == [b"a"]


def test_consumer_stopping_inside_put_is_respected():
    protocol, transport, q, counter = make(0)
    seen: list[bytes] = []

    def consume(record: bytes) -> None:
        seen.append(record)
        counter.stop()
        protocol.stop()

    q.get().addCallback(consume)
    protocol.dataReceived(b"a\nb\nc\n")
    assert transport.stopped
    # Records admitted with the first are delivered, none after the stop.
    assert seen == [b"a"]
    assert list(q.pending) == [b"b", b"c"]


def test_silence_past_the_stall_timeout_ends_as_stalled():
    clock = Clock()
    q: RecordQueue[bytes] = RecordQueue()
    counter = StateCounter()
    counter.start()
    protocol = StreamProtocol(
        LineFramer(),
        LocalGate(counter, QueueSink(q)),
        StreamStats(),
        clock,
        stall_timeout=1.0,
    )
    transport = StubTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    for _ in range(5):
        clock.advance(0.9)
        protocol.dataReceived(b"\n")  # keep-alives count as life
    assert not transport.stopped
    clock.advance(1.0)
    assert transport.stopped
    protocol.connectionLost(Failure(ResponseDone()))
    assert protocol.done.result.ending is Ending.STALLED


def test_a_pause_of_our_own_is_never_a_stall():
    clock = Clock()
    counter = StateCounter()
    counter.start()
    protocol = StreamProtocol(
        LineFramer(),
        LocalGate(counter, QueueSink(RecordQueue())),
        StreamStats(),
        clock,
        stall_timeout=1.0,
    )
    transport = StubTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    protocol.pause("user")
    clock.advance(30)
    assert not transport.stopped
    protocol.resume("user")
    clock.advance(0.9)
    assert not transport.stopped  # the clock restarts at resume
    clock.advance(0.2)
    assert transport.stopped


def test_a_limited_run_queues_past_the_watermark_but_never_past_the_budget():
    q: RecordQueue[bytes] = RecordQueue()
    sink = QueueSink(q, high_watermark=10, budget_bytes=100_000)
    sink.hold(1_000_000)  # the run's limit: far more than the budget allows
    small = [b"x"] * 20
    sink.put(small)
    assert not sink.full  # past the watermark, within the limit and the budget
    # A batch whose ends are tiny and whose middle is huge still counts in full.
    sink.put([b"y"] + [b"z" * 10_000] * 20 + [b"y"])
    assert sink.full
