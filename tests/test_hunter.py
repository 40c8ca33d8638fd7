"""Hunter end to end over real sockets: exact limits, errors, the off switch."""

from __future__ import annotations

import base64
import json
import time

import pytest
import pytest_twisted
from support import sleep, wait_for
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tidehunter_tx import HTTPStatusError, Hunter, RecordQueue, StreamFailed


def ids(records: list[bytes]) -> list[int]:
    return [json.loads(r)["id"] for r in records]


def drain(q: DeferredQueue[bytes]) -> list[bytes]:
    out = list(q.pending)
    q.pending.clear()
    return out


class Scripted(Resource):
    """Writes the given chunks, then finishes, hangs, or drops the connection."""

    isLeaf = True

    def __init__(self, chunks: list[bytes], then: str = "finish", code: int = 200):
        super().__init__()
        self.chunks = chunks
        self.then = then
        self.code = code

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setResponseCode(self.code)
        for chunk in self.chunks:
            request.write(chunk)
        if self.then == "finish":
            request.finish()
        elif self.then == "drop":
            request.transport.loseConnection()
        return NOT_DONE_YET


@pytest.fixture
def scripted():
    """Serve a Scripted resource on a free port; yields a function that sets it."""
    ports = []

    def serve(chunks: list[bytes], then: str = "finish", code: int = 200) -> str:
        port = reactor.listenTCP(
            0, Site(Scripted(chunks, then, code)), interface="127.0.0.1"
        )
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}/"

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_readme_example_limit_then_second_run(firehose):
    h = Hunter(f"{firehose}/stream/20")
    response = await h.tide_on(limit=5)
    assert response.code == 200
    assert ids(list(h.q.pending)) == [0, 1, 2, 3, 4]
    got = [await h.q.get() for _ in range(5)]
    assert ids(got) == [0, 1, 2, 3, 4]
    assert not h.q.pending

    r = await h.tide_on(limit=1)
    assert len(h.q.pending) == 1
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type") == ["application/json"]
    # techies semantics: each stop moves the run's count into total.
    assert (h.sc.count, h.sc.total, h.sc.started) == (0, 6, False)


@pytest.mark.parametrize("limit", [1, 5, 37, 200])
@pytest.mark.parametrize(
    "chunking",
    ["chunk=1", "chunk=7&crlf=1", "chunk=201", "chunk=16384", "chunk=3&crlf=1"],
)
@pytest_twisted.ensureDeferred
async def test_limit_is_exact_for_any_chunking(firehose, limit, chunking):
    h = Hunter(f"{firehose}/firehose?count=200&size=30&{chunking}")
    await h.tide_on(limit=limit)
    assert ids(drain(h.q)) == list(range(limit))
    assert h.sc.total == limit
    assert h.stats.records == limit


@pytest_twisted.ensureDeferred
async def test_stream_shorter_than_limit_delivers_all_and_ends(firehose):
    h = Hunter(f"{firehose}/firehose?count=30&size=50&chunk=13")
    response = await h.tide_on(limit=100)
    assert response.code == 200
    assert ids(drain(h.q)) == list(range(30))


@pytest_twisted.ensureDeferred
async def test_endless_stream_limit_exact_with_a_consumer_awaiting(firehose):
    h = Hunter(f"{firehose}/firehose?size=120")
    run = h.tide_on(limit=5000)
    got = [await h.q.get() for _ in range(5000)]
    await run
    assert ids(got) == list(range(5000))
    assert not h.q.pending


@pytest.mark.parametrize("code", [404, 500])
@pytest_twisted.ensureDeferred
async def test_http_error_fails_the_run_and_queues_nothing(firehose, code):
    h = Hunter(f"{firehose}/status/{code}")
    with pytest.raises(HTTPStatusError) as caught:
        await h.tide_on(limit=10)
    assert caught.value.code == code
    assert f"answered HTTP {code}" in str(caught.value)
    assert not h.q.pending
    assert (h.sc.count, h.sc.total, h.stats.records) == (0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_oversize_record_skipped_and_counted_next_records_intact(scripted):
    big = b'{"id": 99, "pad": "' + b"x" * 5000 + b'"}'
    url = scripted(
        [b'{"id": 0}\n{"id": 1}\n', big[:3000], big[3000:] + b'\n{"id": 2}\n']
    )
    h = Hunter(url, max_record_bytes=1000)
    await h.tide_on()
    assert ids(drain(h.q)) == [0, 1, 2]
    assert h.framer.skipped == 1


@pytest_twisted.ensureDeferred
async def test_clean_end_mid_record_never_yields_the_partial(scripted):
    url = scripted([b'{"id": 0}\r\n{"id": 1}\r\n{"id": 2', b', "half": '])
    h = Hunter(url)
    response = await h.tide_on()
    assert response.code == 200
    assert ids(drain(h.q)) == [0, 1]
    assert h.stats.truncated == 1


@pytest_twisted.ensureDeferred
async def test_dropped_connection_mid_record_fails_and_keeps_whole_records(scripted):
    url = scripted([b'{"id": 0}\n{"id": 1}\n{"id": 2, "ha'], then="drop")
    h = Hunter(url)
    with pytest.raises(StreamFailed, match="broke after 2 records"):
        await h.tide_on()
    assert ids(drain(h.q)) == [0, 1]
    assert h.stats.truncated == 1


@pytest_twisted.ensureDeferred
async def test_tide_off_on_silent_stream_returns_within_100ms(scripted):
    url = scripted([b'{"id": 0}\n'], then="hang")
    h = Hunter(url)
    run = h.tide_on()
    await wait_for(lambda: h.q.pending)
    await sleep(0.2)  # the stream is now silent
    started = time.monotonic()
    h.tide_off()
    response = await run
    elapsed = time.monotonic() - started
    assert response.code == 200
    assert elapsed < 0.1, elapsed
    assert ids(drain(h.q)) == [0]


@pytest_twisted.ensureDeferred
async def test_tide_off_before_the_server_answers(scripted):
    listening = reactor.listenTCP(
        0, Factory.forProtocol(Protocol), interface="127.0.0.1"
    )
    try:
        h = Hunter(f"http://127.0.0.1:{listening.getHost().port}/")
        run = h.tide_on()
        await sleep(0.05)
        started = time.monotonic()
        h.tide_off()
        assert await run is None
        assert time.monotonic() - started < 0.1
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_consumer_stop_ends_the_run_at_once(firehose):
    h = Hunter(f"{firehose}/firehose?size=60")
    run = h.tide_on()
    got = []
    while len(got) < 100:
        got.append(await h.q.get())
    h.sc.stop()  # as a consumer of the original library would
    await run
    got.extend(drain(h.q))
    # What was admitted before the stop is delivered, in order, nothing after.
    assert ids(got) == list(range(len(got)))
    assert h.sc.total == len(got)
    assert h.stats.records == len(got)


@pytest_twisted.ensureDeferred
async def test_passed_empty_queue_is_used_not_replaced(firehose):
    q: DeferredQueue[bytes] = DeferredQueue()
    h = Hunter(f"{firehose}/stream/3", q=q)
    assert h.q is q
    await h.tide_on()
    assert ids(drain(q)) == [0, 1, 2]


@pytest_twisted.ensureDeferred
async def test_sized_deferred_queue_is_honoured_and_loses_nothing(firehose):
    q: DeferredQueue[bytes] = DeferredQueue(size=50)
    h = Hunter(f"{firehose}/firehose?count=2000&size=40", q=q)
    run = h.tide_on(limit=2000)
    got = []
    while len(got) < 2000:
        assert len(q.pending) <= 50
        got.append(await q.get())
        if len(got) % 100 == 0:
            await sleep(0)
    await run
    assert ids(got) == list(range(2000))


@pytest_twisted.ensureDeferred
async def test_second_tide_on_while_running_is_refused(firehose):
    h = Hunter(f"{firehose}/firehose?size=60")
    run = h.tide_on(limit=10)
    with pytest.raises(Exception, match="already on"):
        h.tide_on()
    await run
    assert len(drain(h.q)) == 10


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit must be >= 0"):
        Hunter("http://127.0.0.1:1/").tide_on(limit=-3)


def test_record_queue_is_a_deferred_queue():
    q: RecordQueue[bytes] = RecordQueue()
    got: list[bytes] = []
    q.get().addCallback(got.append)
    q.extend([b"a", b"b", b"c"])
    assert got == [b"a"]
    assert list(q.pending) == [b"b", b"c"]
    d: Deferred[bytes] = q.get()
    assert d.called and d.result == b"b"


@pytest_twisted.ensureDeferred
async def test_gzip_stream_is_decoded_and_limit_exact(firehose):
    h = Hunter(f"{firehose}/firehose?count=500&size=70&chunk=100&gzip=1")
    await h.tide_on(limit=300)
    assert ids(drain(h.q)) == list(range(300))


@pytest_twisted.ensureDeferred
async def test_gzip_stream_pauses_and_resumes(firehose):
    h = Hunter(f"{firehose}/firehose?size=70&gzip=1", high_watermark=500)
    run = h.tide_on(limit=3000)
    await wait_for(lambda: h.stats.pauses >= 1)
    got = [await h.q.get() for _ in range(3000)]
    await run
    assert ids(got) == list(range(3000))


@pytest_twisted.ensureDeferred
async def test_requests_ask_for_gzip_and_say_who_they_are(firehose):
    h = Hunter(f"{firehose}/stream/1")
    await h.tide_on()
    headers = json.loads(h.q.pending[0])["headers"]
    assert headers["Accept-Encoding"] == "gzip"
    assert headers["User-Agent"].startswith("tidehunter-tx/")


@pytest_twisted.ensureDeferred
async def test_credentials_in_the_url_become_basic_auth(firehose):
    base = firehose.replace("http://", "http://ann:s%40cret@")
    h = Hunter(f"{base}/stream/1")
    await h.tide_on()
    headers = json.loads(h.q.pending[0])["headers"]
    assert (
        headers["Authorization"] == "Basic " + base64.b64encode(b"ann:s@cret").decode()
    )
    assert "cret" not in json.dumps(h.status())


class SilentThenAnswering(Protocol):
    """The first connection never gets an answer; later ones get 40 records."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        if self.factory.connections > 1:  # type: ignore[attr-defined]
            body = b"".join(b'{"id":%d}\n' % i for i in range(40))
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.loseConnection()  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_run_started_from_the_end_of_a_halted_run_really_runs():
    factory = Factory.forProtocol(SilentThenAnswering)
    factory.connections = 0  # type: ignore[attr-defined]
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    h = Hunter(f"http://127.0.0.1:{listening.getHost().port}/", reconnect=True)
    reactor.callLater(0.2, h.halt)  # lands while the first request waits
    assert await h.tide_on() is None
    # Started straight from the end of that run: it must not inherit the halt.
    await h.tide_on(limit=30)
    assert len(h.q.pending) == 30
    await listening.stopListening()
