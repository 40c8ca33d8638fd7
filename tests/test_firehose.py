"""Tests for the stream emulator: real sockets on 127.0.0.1, plus a fake request
and a fake clock where exact write boundaries and timings are the point."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from tidehunter_tx.firehose import (
    FirehoseSite,
    FirehoseStats,
    JsonLinesEncoder,
    RecordStreamProducer,
    make_site,
)

ROOT = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[tuple[str, FirehoseSite]]:
    """An emulator of its own (own counters) on a free port of 127.0.0.1."""
    site = make_site()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}", site
    finally:
        pytest_twisted.blockon(port.stopListening())


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def fetch(url: str) -> tuple[int, Any, bytes]:
    """GET through treq (which also decodes gzip), on a fresh connection."""
    response = await treq.get(url, persistent=False)
    return response.code, response.headers, await treq.content(response)


async def fetch_raw(url: str) -> bytes:
    """GET through a bare Agent: the body exactly as sent, still compressed."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", url.encode())
    collector = Collector()
    response.deliverBody(collector)
    await collector.done
    return b"".join(collector.pieces)


async def stats_of(base: str) -> dict[str, int]:
    _, _, body = await fetch(base + "/stats")
    return json.loads(body)  # type: ignore[no-any-return]


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll a (possibly async) condition until true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(interval)


def record(i: int, size: int = 200, terminator: bytes = b"\n") -> bytes:
    """The record the emulator must send for id ``i``, built independently."""
    head = b'{"id":%d,"pad":"' % i
    return head + b"x" * (size - len(head) - 2) + b'"}' + terminator


class Collector(Protocol):
    """Body protocol that keeps each delivery separately."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


class PausingReader(Protocol):
    """A client that stops reading at the first data, like a stuck consumer."""

    def __init__(self) -> None:
        self.received = 0
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.received += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


class FakeRequest:
    """Stands in for twisted.web's Request: records each write, and pushes back
    like a TCP transport (pauseProducing from inside write) once more than
    ``pause_after`` bytes are buffered."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.producer: IPushProducer | None = None
        self.finished = False
        self.unregistered = False
        self.pause_after = pause_after
        self.buffered = 0
        self._done: Deferred[None] = Deferred()

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.buffered += len(data)
        if self.pause_after is not None and self.buffered > self.pause_after:
            assert self.producer is not None
            self.producer.pauseProducing()

    def drain(self) -> None:
        """The transport sent everything: resume the producer."""
        self.buffered = 0
        assert self.producer is not None
        self.producer.resumeProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def finish(self) -> None:
        self.finished = True
        self._done.callback(None)

    def notifyFinish(self) -> Deferred[None]:
        return self._done

    def lose_connection(self) -> None:
        """What twisted.web does when the client goes away mid-stream."""
        assert self.producer is not None
        self._done.errback(Failure(ConnectionDone()))
        self.producer.stopProducing()

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)


def run_to_end(clock: Clock, request: FakeRequest, limit: int = 10_000) -> None:
    for _ in range(limit):
        if request.finished:
            return
        clock.advance(0)
    raise AssertionError("producer did not finish")


# --- /stream/N ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stream_20_gives_20_json_lines_echoing_url_args_and_origin(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    code, headers, body = await fetch(base + "/stream/20?q=%25x&q=2&one=1")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    lines = body.split(b"\n")
    assert lines[-1] == b""
    objects = [json.loads(line) for line in lines[:-1]]
    assert [o["id"] for o in objects] == list(range(20))
    first = objects[0]
    assert first["url"] == base + "/stream/20?q=%25x&q=2&one=1"
    assert first["origin"] == "127.0.0.1"
    assert first["args"] == {"q": ["%x", "2"], "one": "1"}
    assert first["headers"]["Host"] == base.removeprefix("http://")
    assert list(first) == ["url", "args", "headers", "origin", "id"]


@pytest_twisted.ensureDeferred
async def test_stream_0_is_an_empty_body(emulator: tuple[str, FirehoseSite]) -> None:
    base, _ = emulator
    code, _, body = await fetch(base + "/stream/0")
    assert (code, body) == (200, b"")


@pytest.mark.parametrize("path", ["/stream/abc", "/stream/-3", "/stream/1.5"])
@pytest_twisted.ensureDeferred
async def test_stream_with_a_bad_count_answers_400(
    emulator: tuple[str, FirehoseSite], path: str
) -> None:
    base, _ = emulator
    code, headers, body = await fetch(base + path)
    assert code == 400
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert body.endswith(b"\n") and body.count(b"\n") == 1


# --- /firehose over real sockets ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_firehose_count_1000_gives_1000_records_of_exactly_200_bytes_in_order(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    code, headers, body = await fetch(base + "/firehose?count=1000&size=200")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    lines = body.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == 1000
    assert all(len(line) == 200 for line in lines)
    assert [json.loads(line)["id"] for line in lines] == list(range(1000))
    assert body == b"".join(record(i) for i in range(1000))


@pytest_twisted.ensureDeferred
async def test_firehose_start_sets_the_first_id(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    _, _, body = await fetch(base + "/firehose?count=5&size=60&start=98")
    assert body == b"".join(record(i, 60) for i in range(98, 103))


@pytest_twisted.ensureDeferred
async def test_firehose_crlf_terminates_every_record_with_crlf(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    _, _, body = await fetch(base + "/firehose?count=50&size=80&crlf=1&chunk=7")
    assert body.count(b"\r\n") == 50
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert body == b"".join(record(i, 80, b"\r\n") for i in range(50))


@pytest_twisted.ensureDeferred
async def test_firehose_gzip_decodes_with_wbits_31_to_the_same_records(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    plain = b"".join(record(i, 120) for i in range(1000))
    raw = await fetch_raw(base + "/firehose?count=1000&size=120&gzip=1&chunk=4096")
    assert raw[:2] == b"\x1f\x8b"
    assert zlib.decompress(raw, 31) == plain
    # treq's own gzip decoding (ContentDecoderAgent) agrees.
    _, _, decoded = await fetch(base + "/firehose?count=1000&size=120&gzip=1")
    assert decoded == plain


@pytest_twisted.ensureDeferred
async def test_firehose_gzip_is_decodable_as_it_arrives(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(
        b"GET", (base + "/firehose?count=2&size=50&rate=20&gzip=1").encode()
    )
    collector = Collector()
    response.deliverBody(collector)
    await collector.done
    decoder = zlib.decompressobj(31)
    # The first delivery alone (sent 50 ms before the next record) decodes to
    # the first record: every write ends with a sync flush.
    assert decoder.decompress(collector.pieces[0]).startswith(record(0, 50))
    rest = b"".join(collector.pieces[1:])
    whole = zlib.decompress(b"".join(collector.pieces), 31)
    assert whole == record(0, 50) + record(1, 50)
    assert rest


@pytest_twisted.ensureDeferred
async def test_firehose_keepalive_with_a_rate_writes_blank_lines_between_records(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    _, _, body = await fetch(base + "/firehose?count=2&size=30&rate=5&keepalive=0.04")
    lines = body.split(b"\n")
    assert lines.pop() == b""
    records = [line for line in lines if line]
    assert records == [record(0, 30)[:-1], record(1, 30)[:-1]]
    # 200 ms between the two records, a keep-alive every 40 ms of silence.
    assert lines[0] == records[0] and lines[-1] == records[1]
    assert len(lines) - 2 >= 2


@pytest_twisted.ensureDeferred
async def test_firehose_rate_paces_the_records(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    started = time.monotonic()
    _, _, body = await fetch(base + "/firehose?count=6&size=40&rate=50")
    elapsed = time.monotonic() - started
    assert body == b"".join(record(i, 40) for i in range(6))
    assert elapsed >= 0.09  # records due at 0, 20, ..., 100 ms


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("count=-1", "count"),
        ("count=ten", "count"),
        ("size=1.5", "size"),
        ("size=999999999999", "size"),
        ("chunk=0", "chunk"),
        ("rate=nan", "rate"),
        ("rate=-2", "rate"),
        ("keepalive=1e3", "keepalive"),
        ("gzip=2", "gzip"),
        ("crlf=yes", "crlf"),
        ("cuont=5", "cuont"),
        ("count=1&count=2", "count"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_firehose_bad_option_answers_400_with_one_plain_line(
    emulator: tuple[str, FirehoseSite], query: str, mentions: str
) -> None:
    base, site = emulator
    code, headers, body = await fetch(base + "/firehose?" + query)
    assert code == 400
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert mentions.encode() in body
    assert site.stats.active == 0


@pytest_twisted.ensureDeferred
async def test_head_firehose_answers_headers_without_starting_a_stream(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    response = await treq.head(base + "/firehose", persistent=False)
    assert response.code == 200
    assert await treq.content(response) == b""
    assert site.stats.active == 0 and site.stats.bytes_written == 0


# --- /status and /stats ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_500_answers_500_with_a_json_lines_body(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    code, headers, body = await fetch(base + "/status/500")
    assert code == 500
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    objects = [json.loads(line) for line in body.splitlines()]
    assert objects == [{"error": "Internal Server Error", "id": i} for i in range(3)]
    code, _, body = await fetch(base + "/status/429?lines=5")
    assert code == 429 and len(body.splitlines()) == 5
    code, _, _ = await fetch(base + "/status/abc")
    assert code == 400


@pytest_twisted.ensureDeferred
async def test_stats_counts_requests_records_and_bytes(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    await fetch(base + "/firehose?count=10&size=100")
    await fetch(base + "/firehose?count=5&size=50&start=7")
    _, _, stream_body = await fetch(base + "/stream/3")
    await fetch(base + "/firehose?count=x")
    stats = await stats_of(base)
    assert stats == {
        "requests": 5,  # the /stats request counts itself
        "active": 0,
        "bytes_written": 10 * 101 + 5 * 51 + len(stream_body),
        "records_written": 18,
        "pauses": 0,
        "paused_now": 0,
    }
    assert site.stats.requests == 5


@pytest_twisted.ensureDeferred
async def test_two_emulators_in_one_process_keep_separate_counters(
    emulator: tuple[str, FirehoseSite],
) -> None:
    _, site = emulator
    other = make_site()
    port = reactor.listenTCP(0, other, interface="127.0.0.1")
    try:
        await fetch(f"http://127.0.0.1:{port.getHost().port}/firehose?count=3")
    finally:
        await port.stopListening()
    assert other.stats.records_written == 3
    assert site.stats.records_written == 0 and site.stats.requests == 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stalls_the_endless_firehose(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    response = await treq.get(base + "/firehose", unbuffered=True, persistent=False)
    reader = PausingReader()
    response.deliverBody(reader)

    await wait_until(lambda: reader.received > 0)
    last: dict[str, int] = {}
    steady = 0

    async def stalled() -> bool:
        # True once the stream is paused and its byte count held still over
        # five consecutive polls.
        nonlocal last, steady
        now = await stats_of(base)
        same = now["bytes_written"] == last.get("bytes_written")
        steady = steady + 1 if same and now["paused_now"] >= 1 else 0
        last = now
        return steady >= 5

    await wait_until(stalled, timeout=15)
    assert last["active"] == 1 and last["pauses"] >= 1
    # The emulator wrote more than the client read: the rest sits in socket
    # buffers, which is exactly the bounded backlog flow control allows.
    assert last["bytes_written"] >= reader.received

    reader.transport.stopProducing()  # type: ignore[union-attr]
    await reader.done

    async def released() -> bool:
        now = await stats_of(base)
        return now["active"] == 0 and now["paused_now"] == 0

    await wait_until(released)


# --- the producer, with a fake request and a fake clock ------------------------


def test_writes_are_chunk_sized_cuts_of_one_continuous_stream() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request, JsonLinesEncoder(30), stats, clock, limit=50, chunk=7
    ).start()
    # 1550 bytes in 7-byte writes: the first reactor turn stops at 64 writes
    # and continues on a later turn instead of starving the reactor.
    assert len(request.writes) == 64
    assert len(clock.getDelayedCalls()) == 1
    run_to_end(clock, request)
    assert request.body == b"".join(record(i, 30) for i in range(50))
    assert [len(w) for w in request.writes[:-1]] == [7] * (len(request.writes) - 1)
    assert len(request.writes[-1]) == 1550 % 7
    assert request.unregistered and request.finished
    assert clock.getDelayedCalls() == []
    assert (stats.records_written, stats.bytes_written, stats.active) == (50, 1550, 0)


def test_a_paused_producer_writes_nothing_until_resumed() -> None:
    clock, stats = Clock(), FirehoseStats()
    request = FakeRequest(pause_after=100)
    RecordStreamProducer(
        request, JsonLinesEncoder(40), stats, clock, limit=30, chunk=32
    ).start()
    assert len(request.writes) == 4  # 128 bytes buffered > 100: paused
    assert (stats.pauses, stats.paused_now) == (1, 1)
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert len(request.writes) == 4
    while not request.finished:
        request.drain()
    assert request.body == b"".join(record(i, 40) for i in range(30))
    assert stats.paused_now == 0 and stats.pauses >= 2 and stats.active == 0


def test_disconnect_stops_the_timers_and_releases_the_stream() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request, JsonLinesEncoder(30), stats, clock, rate=100, keepalive=1
    ).start()
    clock.pump([0.01] * 10)
    assert 5 <= stats.records_written <= 12 and stats.active == 1
    request.lose_connection()
    assert stats.active == 0 and clock.getDelayedCalls() == []
    written = len(request.writes)
    clock.advance(5)
    assert len(request.writes) == written and not request.finished


def test_disconnect_while_paused_clears_paused_now() -> None:
    clock, stats = Clock(), FirehoseStats()
    request = FakeRequest(pause_after=1000)
    RecordStreamProducer(request, JsonLinesEncoder(), stats, clock).start()
    assert stats.paused_now == 1
    request.lose_connection()
    assert (stats.active, stats.paused_now) == (0, 0)


def test_keepalives_fill_silences_in_rate_mode() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30, b"\r\n"),
        stats,
        clock,
        limit=2,
        rate=1,
        keepalive=0.3,
    ).start()
    clock.pump([0.05] * 30)
    r0, r1 = record(0, 30, b"\r\n"), record(1, 30, b"\r\n")
    # Records at 0 s and 1 s; a keep-alive after each 0.3 s of silence.
    assert request.writes == [r0, b"\r\n", b"\r\n", b"\r\n", r1]
    assert request.finished and stats.records_written == 2
    assert stats.bytes_written == len(r0) + len(r1) + 6


def test_a_long_stall_in_rate_mode_is_not_burst_out_afterwards() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    producer = RecordStreamProducer(
        request, JsonLinesEncoder(30), stats, clock, rate=10
    )
    producer.start()
    producer.pauseProducing()
    clock.advance(100)
    producer.resumeProducing()
    # At most about one second's worth (10 records) comes out at once,
    # not the 1000 that fell due during the stall.
    assert stats.records_written <= 12
    clock.pump([0.1] * 10)
    assert stats.records_written <= 23


@given(
    start=st.one_of(
        st.integers(0, 200),
        st.sampled_from([10**k - 3 for k in range(1, 12)]),
    ),
    count=st.integers(0, 40),
    size=st.integers(0, 300),
    terminator=st.sampled_from([b"\n", b"\r\n"]),
)
def test_json_lines_encoder_pads_exactly_when_the_id_fits(
    start: int, count: int, size: int, terminator: bytes
) -> None:
    data = JsonLinesEncoder(size, terminator).encode(start, count)
    lines = data.split(terminator)
    assert lines.pop() == b""
    assert len(lines) == count
    for i, line in zip(range(start, start + count), lines, strict=True):
        assert json.loads(line)["id"] == i
        if size >= len(b'{"id":,"pad":""}') + len(str(i)):
            assert len(line) == size
        else:
            assert line == b'{"id":%d}' % i


# --- the console script --------------------------------------------------------


def test_console_script_prints_its_port_serves_and_exits_on_sigterm() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidehunter_tx.firehose", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=20), "no 'listening on' line in 20 s"
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(url + "/stream/3", timeout=10) as response:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert response.headers["Content-Length"] is None
            lines = response.read().splitlines()
        assert [json.loads(x)["id"] for x in lines] == [0, 1, 2]
        assert json.loads(lines[0])["url"] == url + "/stream/3"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert proc.stdout.read() == b""  # that one line is all it prints
