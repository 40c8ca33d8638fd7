"""A local HTTP stream emulator (twisted.web) for tests, demos and benchmarks.

Endpoints:

- ``GET /stream/N``: N httpbin-style JSON lines echoing the request.
- ``GET /firehose``: records ``{"id":N,"pad":"xx.."}`` with exact sizes and
  consecutive ids (so a client can check order and loss), as fast as TCP takes
  them or at a fixed rate, optionally gzip-compressed, with keep-alive lines.
- ``GET /status/CODE``: an error status with a JSON-lines body, to catch clients
  that treat error bodies as records.
- ``GET /stats``: counters that prove what the emulator did, e.g. that its
  writes stalled when a client stopped reading.

Every stream is an ``IPushProducer`` registered on its request, so the emulator
honours TCP backpressure instead of buffering without bound, and it can
generate hundreds of MB/s so it is never the bottleneck of a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorCore,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

__all__ = [
    "FirehoseOptions",
    "FirehoseResource",
    "FirehoseRoot",
    "FirehoseSite",
    "FirehoseStats",
    "HttpbinLinesEncoder",
    "JsonLinesEncoder",
    "OptionError",
    "RecordEncoder",
    "RecordStreamProducer",
    "ResponseTarget",
    "StatsResource",
    "StatusResource",
    "StreamResource",
    "main",
    "make_site",
]

DEFAULT_SIZE = 200
DEFAULT_CHUNK = 16384
DEFAULT_STATUS_LINES = 3
# Upper bounds that keep a typo in a query from eating the machine's memory.
MAX_SIZE = 64 * 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_STATUS_LINES = 100_000

# Records are generated in batches of about this many bytes: big enough to
# amortise Python overhead, small enough to keep a paused stream's memory low.
BATCH_BYTES = 256 * 1024
# Writes per reactor turn before yielding, so a client that reads faster than
# we generate cannot starve the other connections.
WRITES_PER_TURN = 64
# Rate mode wakes at most this often and writes every record that is due.
RATE_TICK = 0.01
# Rate mode generates at most this much per turn, and forgives stalls longer
# than MAX_BACKLOG_SECONDS instead of bursting them out afterwards.
MAX_PUMP_BYTES = 1024 * 1024
MAX_BACKLOG_SECONDS = 1.0
# Timers may fire a hair early in float arithmetic; keep-alives tolerate it.
KEEPALIVE_SLACK = 1e-3
# zlib level 1 compresses the padded records as well as level 6 (~60:1) at
# roughly three times the speed, so gzip mode stays off the benchmark's path.
GZIP_LEVEL = 1
GZIP_WBITS = 31


@dataclasses.dataclass
class FirehoseStats:
    """Emulator-wide counters, one object per site so emulators can coexist.

    ``bytes_written`` and ``records_written`` cover the bodies of ``/stream``
    and ``/firehose`` (before gzip); a record counts once the last byte of its
    generation batch has been handed to the transport.
    """

    requests: int = 0
    active: int = 0
    bytes_written: int = 0
    records_written: int = 0
    pauses: int = 0
    paused_now: int = 0

    def to_json(self) -> bytes:
        """Serialise for ``GET /stats``."""
        return json.dumps(dataclasses.asdict(self)).encode("ascii") + b"\n"


class RecordEncoder(Protocol):
    """Turns a run of consecutive ids into body bytes.

    One implementation per wire format (JSON lines today; SSE and
    length-prefixed framing later) so the producer's pacing and flow control
    are shared by all of them.
    """

    #: Approximate bytes per record, terminator included; sizes batches.
    record_bytes: int
    #: What a keep-alive looks like in this format (a blank line for lines).
    keepalive: bytes

    def encode(self, first_id: int, count: int) -> bytes:
        """Return records ``first_id .. first_id + count - 1``, terminated."""
        ...


class JsonLinesEncoder:
    """``{"id":N,"pad":"xx.."}`` records padded to exactly ``size`` bytes.

    When ``size`` is too small to hold the padded form for an id, the record is
    ``{"id":N}`` unpadded (so its length differs from ``size``).
    """

    _HEAD = b'{"id":'
    _OVERHEAD = len(b'{"id":,"pad":""}')

    def __init__(self, size: int = DEFAULT_SIZE, terminator: bytes = b"\n") -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self.terminator = terminator
        self.record_bytes = max(size, len(b'{"id":0}')) + len(terminator)
        self.keepalive = terminator
        self._templates: dict[int, bytes] = {}

    def _template(self, digits: int) -> bytes:
        """A ``%d`` template for ids of this many digits, built once."""
        template = self._templates.get(digits)
        if template is None:
            pad = self.size - self._OVERHEAD - digits
            if pad >= 0:
                body = b'{"id":%d,"pad":"' + b"x" * pad + b'"}'
            else:
                body = b'{"id":%d}'
            template = body + self.terminator
            self._templates[digits] = template
        return template

    def encode(self, first_id: int, count: int) -> bytes:
        """Format in runs of equal digit count, so each run has one template."""
        if first_id < 0:
            raise ValueError("ids must be >= 0")
        parts: list[bytes] = []
        i = first_id
        end = first_id + count
        while i < end:
            digits = len(b"%d" % i)
            run_end = min(end, 10**digits)
            template = self._template(digits)
            parts.append(b"".join([template % n for n in range(i, run_end)]))
            i = run_end
        return parts[0] if len(parts) == 1 else b"".join(parts)


class HttpbinLinesEncoder:
    """httpbin ``/stream/N`` lines: the request echoed, plus ``"id": i``."""

    def __init__(
        self,
        url: str,
        args: Mapping[str, str | list[str]],
        headers: Mapping[str, str],
        origin: str,
    ) -> None:
        echo = json.dumps(
            {"url": url, "args": args, "headers": headers, "origin": origin}
        ).encode("ascii")
        # Replace the closing brace by the id field; escape % for formatting.
        self._template = echo[:-1].replace(b"%", b"%%") + b', "id": %d}\n'
        self.record_bytes = len(self._template) + 4
        self.keepalive = b"\n"

    def encode(self, first_id: int, count: int) -> bytes:
        """Same echo every line; only the id changes."""
        template = self._template
        return b"".join([template % n for n in range(first_id, first_id + count)])


class ResponseTarget(Protocol):
    """The part of ``twisted.web.server.Request`` a stream producer uses."""

    def write(self, data: bytes) -> object: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> object: ...
    def unregisterProducer(self) -> object: ...
    def finish(self) -> object: ...
    def notifyFinish(self) -> Deferred[None]: ...


@implementer(IPushProducer)
class RecordStreamProducer:
    """Streams an encoder's records into a request under TCP flow control.

    The body is one continuous byte stream cut into ``chunk``-sized writes, so
    records straddle writes the way they straddle TCP segments in the wild.
    With ``rate == 0`` it writes until the transport pauses it (the transport
    calls ``pauseProducing`` from inside ``write`` when its buffer is full);
    with ``rate > 0`` a timer writes the records that are due.
    """

    def __init__(
        self,
        request: ResponseTarget,
        encoder: RecordEncoder,
        stats: FirehoseStats,
        clock: IReactorTime,
        *,
        first_id: int = 0,
        limit: int | None = None,
        rate: float = 0.0,
        chunk: int = DEFAULT_CHUNK,
        keepalive: float = 0.0,
        gzip: bool = False,
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self._request = request
        self._encoder = encoder
        self._stats = stats
        self._clock = clock
        self._next_id = first_id
        self._left = limit  # records still to generate; None means endless
        self._rate = rate
        self._chunk = chunk
        self._keepalive = keepalive
        self._compressor = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS) if gzip else None
        )
        record_bytes = max(1, encoder.record_bytes)
        self._batch = max(1, BATCH_BYTES // record_bytes)
        self._pump_records = max(1, MAX_PUMP_BYTES // record_bytes)
        self._buf = b""  # generated bytes not yet written, from _pos on
        self._pos = 0
        self._generated = 0  # stream offset of the end of everything generated
        self._sent = 0  # stream offset of the end of everything written
        self._marks: deque[tuple[int, int]] = deque()  # (batch end, records)
        self._emitted = 0  # records generated so far
        self._t0 = 0.0
        self._last_activity = 0.0
        self._paused = False
        self._done = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Register on the request and write the first batch."""
        self._stats.active += 1
        now = self._clock.seconds()
        self._t0 = now
        self._last_activity = now
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._lost)
        self._pump()

    # IPushProducer

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop writing until resumed."""
        if self._done or self._paused:
            return
        self._paused = True
        self._stats.pauses += 1
        self._stats.paused_now += 1
        self._cancel_call()

    def resumeProducing(self) -> None:
        """The transport drained: carry on where we stopped."""
        if self._done or not self._paused:
            return
        self._paused = False
        self._stats.paused_now -= 1
        self._pump()

    def stopProducing(self) -> None:
        """The connection is going away: drop everything, write nothing."""
        self._close()

    # internals

    def _more(self) -> bool:
        return self._left is None or self._left > 0

    def _generate(self, count: int) -> bytes:
        if self._left is not None:
            count = min(count, self._left)
            self._left -= count
        if count <= 0:
            return b""
        data = self._encoder.encode(self._next_id, count)
        self._next_id += count
        self._emitted += count
        self._generated += len(data)
        self._marks.append((self._generated, count))
        return data

    def _take(self, size: int, generate: bool) -> bytes:
        """Cut the next piece of at most ``size`` bytes off the stream.

        Only the few bytes carried over from the previous batch are copied
        twice; everything else is sliced straight out of fresh batches.
        """
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail >= size:
            self._pos = pos + size
            return buf[pos : pos + size]
        parts = [buf[pos:]] if avail else []
        need = size - avail
        while generate and self._more():
            data = self._generate(self._batch)
            if len(data) >= need:
                parts.append(data[:need])
                self._buf, self._pos = data, need
                return b"".join(parts)
            parts.append(data)
            need -= len(data)
        self._buf, self._pos = b"", 0
        return b"".join(parts)

    def _write(self, piece: bytes) -> None:
        self._sent += len(piece)
        stats = self._stats
        stats.bytes_written += len(piece)
        marks = self._marks
        while marks and marks[0][0] <= self._sent:
            stats.records_written += marks.popleft()[1]
        self._emit(piece)

    def _emit(self, data: bytes) -> None:
        if self._compressor is not None:
            # A sync flush per write lets the client decode as data arrives.
            data = self._compressor.compress(data) + self._compressor.flush(
                zlib.Z_SYNC_FLUSH
            )
        self._request.write(data)

    def _top_up(self, now: float) -> bool:
        """Rate mode: queue the records that are due; True if still behind."""
        rate = self._rate
        due = int((now - self._t0) * rate) + 1 - self._emitted
        max_backlog = max(1, int(rate * MAX_BACKLOG_SECONDS))
        if due > max_backlog:
            self._t0 += (due - max_backlog) / rate
            due = max_backlog
        count = min(due, self._pump_records)
        if count > 0 and self._more():
            data = self._generate(count)
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        return due > count

    def _pump(self) -> None:
        """Write until paused, finished, or this reactor turn's quota is used."""
        self._call = None
        if self._done or self._paused:
            return
        fast = self._rate <= 0
        now = 0.0
        behind = False
        if not fast:
            now = self._clock.seconds()
            behind = self._top_up(now)
        writes = 0
        while not (self._paused or self._done):
            if writes >= WRITES_PER_TURN:
                self._call = self._clock.callLater(0, self._pump)
                return
            piece = self._take(self._chunk, fast)
            if not piece:
                break
            self._write(piece)
            writes += 1
        if self._paused or self._done:
            return
        if not self._more():
            self._finish()
            return
        # Only rate mode gets here: the buffer is empty, wait for the next due.
        if writes:
            self._last_activity = now
        elif (
            self._keepalive > 0
            and now - self._last_activity >= self._keepalive - KEEPALIVE_SLACK
        ):
            self._stats.bytes_written += len(self._encoder.keepalive)
            self._emit(self._encoder.keepalive)
            self._last_activity = now
            if self._paused or self._done:
                return
        self._call = self._clock.callLater(self._next_delay(now, behind), self._pump)

    def _next_delay(self, now: float, behind: bool) -> float:
        if behind:
            return 0.0
        delay = self._t0 + self._emitted / self._rate - now
        if self._keepalive > 0:
            delay = min(delay, self._last_activity + self._keepalive - now)
        return max(delay, RATE_TICK)

    def _finish(self) -> None:
        tail = self._compressor.flush() if self._compressor is not None else b""
        self._close()
        if tail:
            self._request.write(tail)
        self._request.unregisterProducer()
        self._request.finish()

    def _lost(self, reason: Failure) -> None:
        """The client went away; that is normal for a stream, not an error."""
        self._close()

    def _cancel_call(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        self._stats.active -= 1
        if self._paused:
            self._paused = False
            self._stats.paused_now -= 1
        self._cancel_call()
        self._buf, self._pos = b"", 0
        self._marks.clear()


class OptionError(ValueError):
    """A query option has a bad value; the message is the 400 body."""


_INT = re.compile(rb"[0-9]+")
_NUMBER = re.compile(rb"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_BOOLS = {b"0": False, b"false": False, b"1": True, b"true": True}


def _single(args: Mapping[bytes, Sequence[bytes]], name: bytes) -> bytes | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise OptionError(f"{name.decode()} given more than once")
    return values[0]


def _int_option(
    args: Mapping[bytes, Sequence[bytes]],
    name: bytes,
    default: int,
    low: int = 0,
    high: int | None = None,
) -> int:
    raw = _single(args, name)
    if raw is None:
        return default
    label = name.decode()
    value: int | None = None
    if _INT.fullmatch(raw):
        try:
            value = int(raw)
        except ValueError:  # more digits than int() accepts
            value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f" and <= {high}" if high is not None else ""
        raise OptionError(f"{label} must be an integer >= {low}{bound}")
    return value


def _float_option(
    args: Mapping[bytes, Sequence[bytes]], name: bytes, default: float
) -> float:
    raw = _single(args, name)
    if raw is None:
        return default
    if not _NUMBER.fullmatch(raw) or len(raw) > 32:
        raise OptionError(f"{name.decode()} must be a decimal number >= 0")
    return float(raw)


def _bool_option(
    args: Mapping[bytes, Sequence[bytes]], name: bytes, default: bool
) -> bool:
    raw = _single(args, name)
    if raw is None:
        return default
    value = _BOOLS.get(raw.lower())
    if value is None:
        raise OptionError(f"{name.decode()} must be 0 or 1")
    return value


@dataclasses.dataclass(frozen=True)
class FirehoseOptions:
    """The query options of ``GET /firehose``; see :meth:`from_args`."""

    count: int = 0
    size: int = DEFAULT_SIZE
    start: int = 0
    rate: float = 0.0
    chunk: int = DEFAULT_CHUNK
    keepalive: float = 0.0
    crlf: bool = False
    gzip: bool = False

    NAMES = frozenset(
        [b"count", b"size", b"start", b"rate", b"chunk", b"keepalive", b"crlf", b"gzip"]
    )

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> FirehoseOptions:
        """Parse ``request.args`` strictly, so a typo fails loudly with a 400.

        Raises :class:`OptionError` for unknown names, repeated names and
        values that are not in range.
        """
        unknown = sorted(name for name in args if name not in cls.NAMES)
        if unknown:
            shown = unknown[0].decode("utf-8", "replace")
            raise OptionError(f"unknown option {shown!r}")
        return cls(
            count=_int_option(args, b"count", 0),
            size=_int_option(args, b"size", DEFAULT_SIZE, high=MAX_SIZE),
            start=_int_option(args, b"start", 0),
            rate=_float_option(args, b"rate", 0.0),
            chunk=_int_option(args, b"chunk", DEFAULT_CHUNK, low=1, high=MAX_CHUNK),
            keepalive=_float_option(args, b"keepalive", 0.0),
            crlf=_bool_option(args, b"crlf", False),
            gzip=_bool_option(args, b"gzip", False),
        )


def _set_header(request: Request, name: bytes, value: bytes) -> None:
    """Typed wrapper: twisted.web's ``setHeader`` has no annotations."""
    request.setHeader(name, value)


def _plain(request: Request, code: int, message: str) -> bytes:
    """A one-line plain-text answer (errors, the index)."""
    request.setResponseCode(code)
    _set_header(request, b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"


def _leaf_path(request: Request) -> list[bytes]:
    """Path segments after the resource, ignoring one trailing slash."""
    postpath: list[bytes] = list(request.postpath or [])
    if postpath and postpath[-1] == b"":
        postpath.pop()
    return postpath


class _Resource(Resource):
    """Typed base: twisted.web's ``Resource.__init__`` has no annotations."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]


class FirehoseResource(_Resource):
    """``GET /firehose``: sized, numbered records under flow control."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats, clock: IReactorTime) -> None:
        super().__init__()
        self._stats = stats
        self._clock = clock

    def _prepare(self, request: Request) -> FirehoseOptions | bytes:
        if _leaf_path(request):
            return _plain(request, 404, "no such resource")
        try:
            options = FirehoseOptions.from_args(request.args or {})
        except OptionError as e:
            return _plain(request, 400, f"bad request: {e}")
        _set_header(request, b"content-type", b"application/json")
        if options.gzip:
            _set_header(request, b"content-encoding", b"gzip")
        return options

    def render_GET(self, request: Request) -> bytes | int:
        """Start a producer; the response ends when ``count`` is reached."""
        options = self._prepare(request)
        if isinstance(options, bytes):
            return options
        encoder = JsonLinesEncoder(options.size, b"\r\n" if options.crlf else b"\n")
        RecordStreamProducer(
            request,
            encoder,
            self._stats,
            self._clock,
            first_id=options.start,
            limit=options.count or None,
            rate=options.rate,
            chunk=options.chunk,
            keepalive=options.keepalive,
            gzip=options.gzip,
        ).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only: the default would run an endless stream into nothing."""
        options = self._prepare(request)
        return options if isinstance(options, bytes) else b""


def _echo_args(request: Request) -> dict[str, str | list[str]]:
    args: dict[str, str | list[str]] = {}
    for name, values in (request.args or {}).items():
        texts = [v.decode("utf-8", "replace") for v in values]
        args[name.decode("utf-8", "replace")] = texts[0] if len(texts) == 1 else texts
    return args


def _echo_headers(request: Request) -> dict[str, str]:
    return {
        name.decode("latin-1"): ",".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


def _full_url(request: Request) -> str:
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = f"{getattr(address, 'host', '')}:{getattr(address, 'port', 0)}".encode()
    return f"{scheme}://{host.decode('latin-1')}{request.uri.decode('latin-1')}"


class StreamResource(_Resource):
    """``GET /stream/N``: like httpbin, N JSON lines echoing the request."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats, clock: IReactorTime) -> None:
        super().__init__()
        self._stats = stats
        self._clock = clock

    def _count(self, request: Request) -> int | bytes:
        path = _leaf_path(request)
        if len(path) != 1:
            return _plain(request, 404, "use /stream/N")
        if not _INT.fullmatch(path[0]) or len(path[0]) > 18:
            return _plain(request, 400, "bad request: N must be an integer >= 0")
        _set_header(request, b"content-type", b"application/json")
        return int(path[0])

    def render_GET(self, request: Request) -> bytes | int:
        """Stream N lines through the same producer as the firehose."""
        count = self._count(request)
        if isinstance(count, bytes):
            return count
        address = request.getClientAddress()
        origin = getattr(address, "host", "")
        encoder = HttpbinLinesEncoder(
            _full_url(request), _echo_args(request), _echo_headers(request), origin
        )
        RecordStreamProducer(
            request, encoder, self._stats, self._clock, limit=count
        ).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only."""
        count = self._count(request)
        return count if isinstance(count, bytes) else b""


class StatusResource(_Resource):
    """``GET /status/CODE?lines=N``: that status with a JSON-lines error body."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        """Answer in one piece: error bodies are short."""
        path = _leaf_path(request)
        if len(path) != 1:
            return _plain(request, 404, "use /status/CODE")
        raw = path[0]
        code = int(raw) if re.fullmatch(rb"[0-9]{3}", raw) else 0
        if not 200 <= code <= 599:
            return _plain(request, 400, "bad request: CODE must be 200..599")
        args = request.args or {}
        try:
            lines = _int_option(
                args, b"lines", DEFAULT_STATUS_LINES, high=MAX_STATUS_LINES
            )
        except OptionError as e:
            return _plain(request, 400, f"bad request: {e}")
        phrase = json.dumps(RESPONSES.get(code, b"Error").decode("latin-1"))
        escaped = phrase.encode("ascii").replace(b"%", b"%%")
        template = b'{"error":' + escaped + b',"id":%d}\n'
        request.setResponseCode(code)
        _set_header(request, b"content-type", b"application/json")
        return b"".join([template % i for i in range(lines)])


class StatsResource(_Resource):
    """``GET /stats``: the site's counters as one JSON object."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats) -> None:
        super().__init__()
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        """Never cached: tests poll it."""
        _set_header(request, b"content-type", b"application/json")
        _set_header(request, b"cache-control", b"no-store")
        return self._stats.to_json()


_INDEX = """tidehunter-firehose: a local HTTP stream emulator
GET /stream/N
GET /firehose?count=&size=&start=&rate=&chunk=&keepalive=&crlf=1&gzip=1
GET /status/CODE?lines=N
GET /stats"""


class FirehoseRoot(_Resource):
    """Dispatches the endpoints and counts every request in ``stats``."""

    def __init__(self, clock: IReactorTime, stats: FirehoseStats | None = None) -> None:
        super().__init__()
        self.stats = stats if stats is not None else FirehoseStats()
        self._routes: dict[bytes, IResource] = {
            b"stream": StreamResource(self.stats, clock),
            b"firehose": FirehoseResource(self.stats, clock),
            b"status": StatusResource(),
            b"stats": StatsResource(self.stats),
        }

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Every request passes here exactly once, so this is where we count."""
        self.stats.requests += 1
        if path == b"":
            return self
        return self._routes.get(path) or NoResource()

    def render_GET(self, request: Request) -> bytes:
        """A short index for humans poking at the demo."""
        return _plain(request, 200, _INDEX)


class FirehoseSite(Site):
    """A ``Site`` that exposes its emulator's counters as ``stats``."""

    noisy = False

    def __init__(self, root: FirehoseRoot) -> None:
        super().__init__(root)  # type: ignore[no-untyped-call]
        self.stats = root.stats


def make_site(
    clock: IReactorTime | None = None, stats: FirehoseStats | None = None
) -> FirehoseSite:
    """Build the emulator; ``clock`` defaults to the global reactor."""
    if clock is None:
        from twisted.internet import reactor

        clock = cast(IReactorTime, reactor)
    return FirehoseSite(FirehoseRoot(clock, stats))


def main(argv: list[str] | None = None) -> None:
    """``tidehunter-firehose``: serve until SIGINT/SIGTERM.

    Prints exactly one line, ``listening on http://HOST:PORT``, to stdout so
    scripts can learn the port when ``--port 0`` picked it; logs go to stderr.
    """
    parser = argparse.ArgumentParser(
        prog="tidehunter-firehose",
        description="Local HTTP stream emulator for tidehunter-tx.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    options = parser.parse_args(argv)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    try:
        site = cast(ServerFactory, make_site(cast(IReactorTime, reactor)))
        port = cast(IReactorTCP, reactor).listenTCP(
            options.port, site, interface=options.host
        )
    except CannotListenError as e:
        raise SystemExit(f"tidehunter-firehose: {e}") from e
    address = port.getHost()
    host = getattr(address, "host", options.host)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{getattr(address, 'port', 0)}", flush=True)
    cast(IReactorCore, reactor).run()


if __name__ == "__main__":
    main()
