"""Tests for the stream emulator: real sockets on 127.0.0.1, plus a fake request
and a fake clock where exact write boundaries and timings are the point."""

from __future__ import annotations

import json
import os
import re
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
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from tidehunter_tx.firehose import (
    BAD_LENGTH_LINE,
    MALFORMED_CHUNK,
    Drop,
    FirehoseSite,
    FirehoseStats,
    Inject,
    JsonLinesEncoder,
    LengthEncoder,
    RecordStreamProducer,
    SSEEncoder,
    Stall,
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


def sse_event(i: int, size: int = 200, eol: bytes = b"\n") -> bytes:
    """The event the emulator must send for id ``i`` with ``format=sse``."""
    return b"id: %d" % i + eol + b"data: " + record(i, size, b"") + eol + eol


def length_record(i: int, size: int = 200) -> bytes:
    """The record the emulator must send for id ``i`` with ``format=length``."""
    return b"%d\r\n" % (size + 2) + record(i, size, b"\r\n")


def parse_length_prefixed(body: bytes) -> list[bytes]:
    """Split a ``delimited=length`` body; every length line must be right."""
    records = []
    pos = 0
    while pos < len(body):
        eol = body.index(b"\r\n", pos)
        length = int(body[pos:eol])
        payload = body[eol + 2 : eol + 2 + length]
        assert len(payload) == length and payload.endswith(b"\r\n")
        records.append(payload[:-2])
        pos = eol + 2 + length
    return records


class RawClient(Protocol):
    """Keeps every byte the server sends, until the connection closes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(bytes(self.data))


async def raw_get(base: str, target: str, *headers: str) -> tuple[bytes, bytes]:
    """GET over a bare TCP connection: (head, body) exactly as on the wire."""
    port = int(base.rsplit(":", 1)[1])
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    request = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
        *headers,
    ]
    assert client.transport is not None
    client.transport.write("\r\n".join([*request, "", ""]).encode("latin-1"))
    raw = await client.done
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> tuple[bytes, bool, bytes]:
    """Decode a chunked body as far as it is well formed.

    Returns the payload, whether the final zero-size chunk (with no trailers)
    ended it, and the bytes from where decoding stopped.
    """
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0 or not re.fullmatch(rb"[0-9a-fA-F]+", body[pos:eol]):
            return bytes(out), False, body[pos:]
        size = int(body[pos:eol], 16)
        start = eol + 2
        if size == 0:
            return bytes(out), body[start:] == b"\r\n", body[start:]
        chunk = body[start : start + size]
        out += chunk
        if len(chunk) < size or body[start + size : start + size + 2] != b"\r\n":
            return bytes(out), False, body[start + size :]
        pos = start + size + 2


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
        ("format=xml", "format"),
        ("format=sse&format=sse", "format"),
        ("retry=500", "retry"),
        ("format=length&retry=500", "retry"),
        ("format=sse&retry=-1", "retry"),
        ("format=length&crlf=1", "crlf"),
        ("bad_length_after=3", "bad_length_after"),
        ("drop_mid=1", "drop_mid"),
        ("drop_every=0", "drop_every"),
        ("drop_after=x", "drop_after"),
        ("stall_for=1", "stall_for"),
        ("stall_after=1&stall_for=soon", "stall_for"),
        ("malformed=1", "malformed"),
        ("drop_after=3&malformed=2", "malformed"),
        ("status=200", "status"),
        ("status=99", "status"),
        ("status=600", "status"),
        ("status=5000", "status"),
        ("retry_after=3", "retry_after"),
        ("status=503&retry_after=1.5", "retry_after"),
        ("fail_times=2", "fail_times"),
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
    sse = await treq.head(base + "/firehose?format=sse&status=503", persistent=False)
    assert sse.code == 200  # HEAD shows the stream's headers, never a fault
    assert sse.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert site.stats.active == 0 and site.stats.bytes_written == 0
    assert site.stats.request_times == [] and site.stats.faults == {}


# --- /firehose wire formats ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sse_format_sends_one_event_per_record_with_consecutive_ids(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    code, headers, body = await fetch(
        base + "/firehose?format=sse&count=5&size=60&start=7&chunk=5"
    )
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert headers.getRawHeaders(b"cache-control") == [b"no-cache"]
    assert body == b"".join(sse_event(i, 60) for i in range(7, 12))
    assert site.stats.records_written == 5 and site.stats.bytes_written == len(body)


@pytest_twisted.ensureDeferred
async def test_sse_retry_field_comes_first_and_crlf_ends_every_line(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    _, _, body = await fetch(
        base + "/firehose?format=sse&count=2&size=40&retry=1500&crlf=1"
    )
    events = b"".join(sse_event(i, 40, b"\r\n") for i in range(2))
    assert body == b"retry: 1500\r\n\r\n" + events
    assert site.stats.records_written == 2


@pytest_twisted.ensureDeferred
async def test_sse_last_event_id_resumes_after_it_and_is_recorded(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    url = base + "/firehose?format=sse&count=10&size=40"

    async def get(last_id: str | None) -> tuple[int, bytes]:
        headers = {} if last_id is None else {"Last-Event-ID": last_id}
        response = await treq.get(url, headers=headers, persistent=False)
        return response.code, await treq.content(response)

    assert await get(None) == (200, b"".join(sse_event(i, 40) for i in range(10)))
    assert await get("4") == (200, b"".join(sse_event(i, 40) for i in range(5, 10)))
    assert await get("8") == (200, sse_event(9, 40))
    # Past the end of the stream: 204, the event-stream way to say "stop".
    assert await get("9") == (204, b"")
    assert await get("12345") == (204, b"")
    # An empty id means "no id" (the client has none yet): from the start.
    code, body = await get("")
    assert code == 200 and body.startswith(sse_event(0, 40))
    code, body = await get("4x")
    assert code == 400 and b"Last-Event-ID" in body
    assert site.stats.last_event_ids == [None, "4", "8", "9", "12345", "", "4x"]
    assert len(site.stats.request_times) == 7


@pytest_twisted.ensureDeferred
async def test_last_event_id_does_not_resume_the_other_formats(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    response = await treq.get(
        base + "/firehose?count=3&size=40",
        headers={"Last-Event-ID": "1"},
        persistent=False,
    )
    assert await treq.content(response) == b"".join(record(i, 40) for i in range(3))
    assert site.stats.last_event_ids == ["1"]


@pytest_twisted.ensureDeferred
async def test_sse_keepalives_are_comment_lines(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    _, _, body = await fetch(
        base + "/firehose?format=sse&count=2&size=30&rate=5&keepalive=0.04"
    )
    events = sse_event(0, 30) + sse_event(1, 30)
    assert body.startswith(sse_event(0, 30)) and body.endswith(sse_event(1, 30))
    assert body.replace(b":\n", b"") == events
    assert body.count(b":\n") >= 2  # 200 ms between events, one every 40 ms


@pytest_twisted.ensureDeferred
async def test_length_format_prefixes_each_record_with_its_byte_count(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    code, headers, body = await fetch(
        base + "/firehose?format=length&count=20&size=50&chunk=3"
    )
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert body == b"".join(length_record(i, 50) for i in range(20))
    assert parse_length_prefixed(body) == [record(i, 50, b"") for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_length_format_counts_right_when_records_outgrow_their_size(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    # size=20 fits ids of up to 4 digits; 10000 and up are sent unpadded.
    _, _, body = await fetch(
        base + "/firehose?format=length&count=4&size=20&start=9998"
    )
    records = parse_length_prefixed(body)
    assert [json.loads(r)["id"] for r in records] == [9998, 9999, 10000, 10001]
    assert [len(r) for r in records] == [20, 20, 12, 12]


@pytest.mark.parametrize("wire", ["sse", "length"])
@pytest_twisted.ensureDeferred
async def test_every_format_gzips_to_the_same_bytes(
    emulator: tuple[str, FirehoseSite], wire: str
) -> None:
    base, _ = emulator
    query = f"/firehose?format={wire}&count=300&size=90&chunk=1000"
    _, _, plain = await fetch(base + query)
    raw = await fetch_raw(base + query + "&gzip=1")
    assert raw[:2] == b"\x1f\x8b"
    assert zlib.decompress(raw, 31) == plain
    assert len(plain) > 300 * 90


# --- /firehose faults -------------------------------------------------------------


@pytest.mark.parametrize("mid", [False, True])
@pytest_twisted.ensureDeferred
async def test_drop_after_cuts_the_chunked_body_after_exactly_n_records(
    emulator: tuple[str, FirehoseSite], mid: bool
) -> None:
    base, site = emulator
    query = "count=10&size=40&chunk=7&drop_after=3" + ("&drop_mid=1" if mid else "")
    head, body = await raw_get(base, "/firehose?" + query)
    assert head.startswith(b"HTTP/1.1 200 ")
    payload, ended, rest = dechunk(body)
    half = record(3, 40)[:20] if mid else b""
    assert payload == record(0, 40) + record(1, 40) + record(2, 40) + half
    assert (ended, rest) == (False, b"")
    assert site.stats.faults == {"drop": 1}
    assert site.stats.records_written == 3 and site.stats.active == 0


@pytest_twisted.ensureDeferred
async def test_drop_every_drops_at_stream_positions_and_count_ends_cleanly(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    target = "/firehose?format=sse&count=25&size=40&drop_every=10"

    async def events(last_id: str | None) -> tuple[list[int], bool]:
        extra = [] if last_id is None else [f"Last-Event-ID: {last_id}"]
        _, body = await raw_get(base, target, *extra)
        payload, ended, _ = dechunk(body)
        found = [int(n) for n in re.findall(rb"^id: (\d+)$", payload, re.M)]
        assert payload == b"".join(sse_event(i, 40) for i in found)
        return found, ended

    assert await events(None) == (list(range(10)), False)
    assert await events("9") == (list(range(10, 20)), False)
    # Positions count from the stream's start, not from the resume.
    assert await events("14") == (list(range(15, 20)), False)
    # The last stretch is shorter than 10: the stream ends, it is not dropped.
    assert await events("19") == (list(range(20, 25)), True)
    assert site.stats.faults == {"drop": 3}
    # Without resume (lines), every response starts over and drops after 10.
    _, body = await raw_get(base, "/firehose?count=25&size=40&drop_every=10")
    payload, ended, _ = dechunk(body)
    assert (payload, ended) == (b"".join(record(i, 40) for i in range(10)), False)


@pytest_twisted.ensureDeferred
async def test_count_wins_over_a_drop_at_the_same_position(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    _, body = await raw_get(
        base, "/firehose?format=sse&count=20&drop_every=10", "Last-Event-ID: 9"
    )
    payload, ended, _ = dechunk(body)
    assert ended and payload == b"".join(sse_event(i) for i in range(10, 20))
    assert site.stats.faults == {}


@pytest_twisted.ensureDeferred
async def test_malformed_drop_writes_a_broken_chunk_past_the_encoder(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    _, body = await raw_get(base, "/firehose?count=10&size=40&drop_after=3&malformed=1")
    payload, ended, rest = dechunk(body)
    assert payload == b"".join(record(i, 40) for i in range(3))
    assert not ended and rest == MALFORMED_CHUNK
    # With gzip and drop_mid too, the broken chunk is raw bytes on the wire.
    _, body = await raw_get(
        base, "/firehose?count=10&size=40&drop_after=3&drop_mid=1&malformed=1&gzip=1"
    )
    payload, ended, rest = dechunk(body)
    assert not ended and rest == MALFORMED_CHUNK
    decoded = zlib.decompressobj(31).decompress(payload)
    assert decoded == b"".join(record(i, 40) for i in range(3)) + record(3, 40)[:20]
    assert site.stats.faults == {"malformed": 2} and site.stats.active == 0


@pytest_twisted.ensureDeferred
async def test_bad_length_after_splices_a_bad_length_line_and_carries_on(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    _, _, body = await fetch(
        base + "/firehose?format=length&count=4&size=40&bad_length_after=2"
    )
    good = [length_record(i, 40) for i in range(4)]
    assert body == good[0] + good[1] + BAD_LENGTH_LINE + good[2] + good[3]
    assert not BAD_LENGTH_LINE.strip().isdigit()
    assert site.stats.faults == {"bad_length": 1}


@pytest_twisted.ensureDeferred
async def test_stall_for_pauses_the_stream_then_carries_on(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(
        b"GET",
        (base + "/firehose?count=6&size=40&stall_after=2&stall_for=0.3").encode(),
    )
    arrivals: list[tuple[float, int]] = []  # (when, bytes so far)
    collector = Collector()
    original = collector.dataReceived

    def timed(data: bytes) -> None:
        original(data)
        arrivals.append((time.monotonic(), sum(map(len, collector.pieces))))

    collector.dataReceived = timed  # type: ignore[method-assign]
    response.deliverBody(collector)
    await collector.done
    assert b"".join(collector.pieces) == b"".join(record(i, 40) for i in range(6))
    before = max(t for t, size in arrivals if size <= 2 * 41)
    after = min(t for t, size in arrivals if size > 2 * 41)
    assert after - before >= 0.25  # 0.3 s at the server, less a little jitter
    assert site.stats.faults == {"stall": 1}


@pytest_twisted.ensureDeferred
async def test_stall_without_stall_for_holds_the_connection_open(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    response = await treq.get(
        base + "/firehose?size=40&stall_after=5", unbuffered=True, persistent=False
    )
    collector = Collector()
    response.deliverBody(collector)
    await wait_until(lambda: site.stats.faults == {"stall": 1})
    await wait_until(lambda: sum(map(len, collector.pieces)) == 5 * 41)
    assert site.stats.active == 1 and site.stats.records_written == 5
    assert not collector.done.called
    collector.transport.stopProducing()  # type: ignore[union-attr]
    await collector.done
    await wait_until(lambda: site.stats.active == 0)


@pytest_twisted.ensureDeferred
async def test_a_stall_at_0_still_sends_the_headers_at_once(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    # Without the headers the client would wait for its header timeout.
    response = await treq.get(
        base + "/firehose?format=sse&stall_after=0",
        unbuffered=True,
        persistent=False,
        timeout=5,
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    collector = Collector()
    response.deliverBody(collector)
    assert site.stats.faults == {"stall": 1} and site.stats.bytes_written == 0
    collector.transport.stopProducing()  # type: ignore[union-attr]
    await collector.done
    assert collector.pieces == []
    await wait_until(lambda: site.stats.active == 0)


@pytest_twisted.ensureDeferred
async def test_status_answers_for_the_first_fail_times_requests_then_streams(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    query = "/firehose?count=3&size=40&status=503&retry_after=7&fail_times=2"
    for _ in range(2):
        code, headers, body = await fetch(base + query)
        assert code == 503
        assert headers.getRawHeaders(b"retry-after") == [b"7"]
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert [json.loads(line)["id"] for line in body.splitlines()] == [0, 1, 2]
    code, headers, body = await fetch(base + query)
    assert code == 200 and not headers.hasHeader(b"retry-after")
    assert body == b"".join(record(i, 40) for i in range(3))
    # Another query has its own count: it fails again.
    code, _, _ = await fetch(base + query + "&start=0")
    assert code == 503
    assert site.stats.faults == {"status": 3}
    # Without fail_times, every request fails; 204 has no body.
    for _ in range(2):
        code, _, body = await fetch(base + "/firehose?status=429")
        assert code == 429 and body
    assert (await fetch(base + "/firehose?format=sse&status=204"))[::2] == (204, b"")


@pytest_twisted.ensureDeferred
async def test_fail_times_also_limits_the_stream_faults(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    target = "/firehose?count=5&size=40&drop_after=2&fail_times=1"
    payload, ended, _ = dechunk((await raw_get(base, target))[1])
    assert (payload, ended) == (record(0, 40) + record(1, 40), False)
    payload, ended, _ = dechunk((await raw_get(base, target))[1])
    assert (payload, ended) == (b"".join(record(i, 40) for i in range(5)), True)
    assert site.stats.faults == {"drop": 1}


@pytest_twisted.ensureDeferred
async def test_request_times_follow_the_emulator_clock(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    started = time.time()
    for _ in range(3):
        await fetch(base + "/firehose?count=1")
    await fetch(base + "/stats")  # not a /firehose request: not logged
    times = site.stats.request_times
    assert len(times) == 3 and times == sorted(times)
    assert started - 1 <= times[0] <= times[-1] <= time.time() + 1


def test_the_request_log_keeps_the_newest_entries() -> None:
    stats = FirehoseStats()
    for i in range(10_005):
        stats.note_request(float(i), str(i))
    assert len(stats.request_times) == len(stats.last_event_ids) == 10_000
    assert stats.request_times[0] == 5.0 and stats.last_event_ids[-1] == "10004"


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
    times = stats.pop("request_times")
    assert stats == {
        "requests": 5,  # the /stats request counts itself
        "active": 0,
        "bytes_written": 10 * 101 + 5 * 51 + len(stream_body),
        "records_written": 18,
        "pauses": 0,
        "paused_now": 0,
        # One entry per /firehose GET, the one refused with a 400 included.
        "last_event_ids": [None, None, None],
        "faults": {},
    }
    assert len(times) == 3 and times == sorted(times)
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


class FakeConnection:
    """Stands in for the raw connection under a response."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.closed = False

    def write_raw(self, data: bytes) -> None:
        assert not self.closed
        self.raw.append(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("chunk", [1, 7, 16384])
@pytest.mark.parametrize("mid", [False, True])
def test_a_drop_comes_after_exactly_n_records_for_any_chunk_size(
    chunk: int, mid: bool
) -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    connection = FakeConnection()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30),
        stats,
        clock,
        chunk=chunk,
        faults=[(4, Drop(mid))],
        connection=connection,
    ).start()
    while not connection.closed:
        assert clock.getDelayedCalls(), "the producer stopped before the drop"
        clock.advance(0)
    half = record(4, 30)[:15] if mid else b""
    assert request.body == b"".join(record(i, 30) for i in range(4)) + half
    assert not request.finished and connection.raw == []
    assert clock.getDelayedCalls() == []
    assert (stats.records_written, stats.active, stats.faults) == (4, 0, {"drop": 1})
    assert stats.bytes_written == len(request.body)


def test_the_limit_wins_over_a_fault_at_the_same_position() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    connection = FakeConnection()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30),
        stats,
        clock,
        limit=3,
        faults=[(3, Drop(True)), (3, Stall())],
        connection=connection,
    ).start()
    run_to_end(clock, request)
    assert request.body == b"".join(record(i, 30) for i in range(3))
    assert not connection.closed and stats.faults == {}


def test_a_malformed_chunk_goes_past_the_response_then_the_connection_closes() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    connection = FakeConnection()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30),
        stats,
        clock,
        faults=[(2, Drop(raw=MALFORMED_CHUNK))],
        connection=connection,
    ).start()
    assert request.body == record(0, 30) + record(1, 30)
    assert connection.raw == [MALFORMED_CHUNK] and connection.closed
    assert stats.active == 0 and stats.faults == {"malformed": 1}


def test_an_injected_line_sits_between_records_and_the_stream_carries_on() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request,
        LengthEncoder(30),
        stats,
        clock,
        limit=4,
        chunk=5,
        faults=[(2, Inject())],
    ).start()
    run_to_end(clock, request)
    good = [length_record(i, 30) for i in range(4)]
    assert request.body == good[0] + good[1] + BAD_LENGTH_LINE + good[2] + good[3]
    assert stats.records_written == 4 and stats.bytes_written == len(request.body)


def test_a_stall_for_good_writes_nothing_more_and_is_released_on_disconnect() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30),
        stats,
        clock,
        rate=100,
        keepalive=0.05,
        faults=[(3, Stall())],
    ).start()
    clock.pump([0.01] * 10)
    assert request.body == b"".join(record(i, 30) for i in range(3))
    clock.pump([1.0] * 100)  # no records, and no keep-alives either
    assert request.body == b"".join(record(i, 30) for i in range(3))
    assert clock.getDelayedCalls() == [] and stats.faults == {"stall": 1}
    request.lose_connection()
    assert stats.active == 0 and not request.finished


def test_a_stall_for_seconds_resumes_at_the_rate_without_a_burst() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request,
        JsonLinesEncoder(30),
        stats,
        clock,
        limit=6,
        rate=10,
        faults=[(2, Stall(5.0))],
    ).start()
    clock.advance(0.1)  # records at 0 s and 0.1 s, then the stall until 5.1 s
    assert stats.records_written == 2
    clock.advance(4.95)
    assert stats.records_written == 2 and len(clock.getDelayedCalls()) == 1
    # The stall ends; the pace carries on shifted by it (record 2 was due at
    # 0.2 s, now at 5.3 s) instead of bursting out what fell due meanwhile.
    clock.advance(0.15)  # 5.2 s
    assert stats.records_written == 2
    clock.advance(0.15)  # 5.35 s
    assert stats.records_written == 3
    clock.advance(0.1)  # 5.45 s
    assert stats.records_written == 4
    clock.pump([0.1] * 3)
    assert request.finished and stats.records_written == 6
    assert request.body == b"".join(record(i, 30) for i in range(6))


def test_a_stall_that_ends_while_paused_waits_for_the_resume() -> None:
    clock, stats = Clock(), FirehoseStats()
    request = FakeRequest()
    producer = RecordStreamProducer(
        request, JsonLinesEncoder(30), stats, clock, limit=4, faults=[(2, Stall(1.0))]
    )
    producer.start()
    producer.pauseProducing()
    clock.advance(2)
    assert request.body == record(0, 30) + record(1, 30)
    producer.resumeProducing()
    run_to_end(clock, request)
    assert request.body == b"".join(record(i, 30) for i in range(4))


def test_a_disconnect_during_a_stall_cancels_its_timer() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    RecordStreamProducer(
        request, JsonLinesEncoder(30), stats, clock, faults=[(1, Stall(10.0))]
    ).start()
    assert len(clock.getDelayedCalls()) == 1
    request.lose_connection()
    assert clock.getDelayedCalls() == [] and stats.active == 0
    clock.advance(20)
    assert request.body == record(0, 30)


def test_the_preamble_goes_first_and_is_not_a_record() -> None:
    clock, request, stats = Clock(), FakeRequest(), FirehoseStats()
    encoder = SSEEncoder(40)
    RecordStreamProducer(
        request,
        encoder,
        stats,
        clock,
        limit=2,
        chunk=3,
        preamble=encoder.retry_field(250),
    ).start()
    run_to_end(clock, request)
    assert request.body == b"retry: 250\n\n" + sse_event(0, 40) + sse_event(1, 40)
    assert stats.records_written == 2 and stats.bytes_written == len(request.body)


def test_faults_that_break_the_connection_need_one() -> None:
    for fault in (Drop(), Drop(True, MALFORMED_CHUNK)):
        with pytest.raises(ValueError, match="needs a connection"):
            RecordStreamProducer(
                FakeRequest(),
                JsonLinesEncoder(),
                FirehoseStats(),
                Clock(),
                faults=[(1, fault)],
            )
    with pytest.raises(ValueError, match="positions"):
        RecordStreamProducer(
            FakeRequest(),
            JsonLinesEncoder(),
            FirehoseStats(),
            Clock(),
            faults=[(-1, Stall())],
        )


@given(
    start=st.one_of(
        st.integers(0, 200),
        st.sampled_from([10**k - 3 for k in range(1, 12)]),
    ),
    count=st.integers(0, 30),
    size=st.integers(0, 120),
    eol=st.sampled_from([b"\n", b"\r\n"]),
)
def test_sse_and_length_encoders_frame_exactly(
    start: int, count: int, size: int, eol: bytes
) -> None:
    expected = JsonLinesEncoder(size, b"\n").encode(start, count).split(b"\n")[:-1]
    sse = SSEEncoder(size, eol).encode(start, count)
    events = sse.split(eol + eol)
    assert events.pop() == b""
    assert events == [
        b"id: %d" % i + eol + b"data: " + line
        for i, line in zip(range(start, start + count), expected, strict=True)
    ]
    length = LengthEncoder(size).encode(start, count)
    assert parse_length_prefixed(length) == expected


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
