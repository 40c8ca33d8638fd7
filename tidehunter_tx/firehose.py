"""A local HTTP stream emulator (twisted.web) for tests, demos and benchmarks.

Endpoints:

- ``GET /stream/N``: N httpbin-style JSON lines echoing the request.
- ``GET /firehose``: records ``{"id":N,"pad":"xx.."}`` with exact sizes and
  consecutive ids (so a client can check order and loss), as fast as TCP takes
  them or at a fixed rate, optionally gzip-compressed, with keep-alives, in one
  of three wire formats, with faults on request (see below).
- ``GET /status/CODE``: an error status with a JSON-lines body, to catch clients
  that treat error bodies as records.
- ``GET /redirect/N?to=PATH``: ``302`` to ``/redirect/N-1`` ... then to PATH
  (default ``/stream/1``, on this server): a redirect chain.
- ``GET /api/v1/pods?watch=true``: a Kubernetes watch over a history of pod
  events with resourceVersions 1, 2, 3 ... that resumes from ``resourceVersion``
  (see below).
- ``GET /DB/_changes?feed=continuous``: a CouchDB continuous changes feed, for
  any database name, that resumes from ``since`` (see below).
- ``GET /stats``: counters that prove what the emulator did, e.g. that its
  writes stalled when a client stopped reading, or which ``Last-Event-ID`` each
  reconnect carried.

Every stream is an ``IPushProducer`` registered on its request, so the emulator
honours TCP backpressure instead of buffering without bound, and it can
generate hundreds of MB/s so it is never the bottleneck of a benchmark.

``/firehose`` query options (strict: an unknown name, a repeated name, a value
out of range or an option that needs another one missing is a 400):

``count=N``
    records in the whole stream, ids ``start .. start+N-1``; 0 (default) is
    endless.
``size=BYTES``
    bytes of each record's JSON object (terminator and framing excluded);
    default 200.
``start=ID``, ``rate=PER_SECOND``, ``chunk=BYTES``, ``keepalive=SECONDS``
    first id; records per second (0: as fast as TCP takes them); bytes per
    write; a keep-alive after this much silence (rate mode only).
``gzip=1``
    ``Content-Encoding: gzip``, a sync flush after every write.
``gzip_buffer=1``
    (with ``gzip``) no sync flush: the compressor buffers as express's
    ``compression`` does (pouchdb-server), so a slow stream sends the 10-byte
    gzip header and then nothing a client can decode for a long time; and,
    like it, compresses only for a client whose ``Accept-Encoding`` has gzip.
``crlf=1``
    ``\\r\\n`` line ends (``lines`` and ``sse`` formats).
``format=lines|sse|length``
    ``lines`` (default): one JSON object per line, blank-line keep-alives.
    ``sse``: ``text/event-stream``; each record is an event
    ``id: N\\ndata: {"id":N,...}\\n\\n``; keep-alives are ``:`` comment
    lines; a ``Last-Event-ID: K`` request header resumes the stream at id
    ``K+1`` (``count`` still bounds the whole stream, so a resume past its end
    is answered ``204 No Content``, the event-stream "stop"; a header that is
    not a decimal id is a 400).
    ``length``: Twitter's ``delimited=length``: ``N\\r\\n{record}\\r\\n``
    where ``N`` counts the record and its ``\\r\\n``; keep-alives are
    ``\\r\\n``.
``retry=MS``
    (``sse``) a ``retry: MS`` field before the first event.

Faults.  Every ``*_after=N`` counts records of *this response*:

``drop_after=N``
    after N records, the connection is dropped in the middle of the chunked
    body: what was written is flushed, then the socket is closed and the
    final chunk never comes.  (Not a TCP reset: a reset would also throw away
    whatever still sat in the server's socket buffer, so a client that was
    not reading at that moment would lose records the emulator counted.)
``drop_mid=1``
    with ``drop_after`` or ``drop_every``: the first half of the next record
    goes out before the drop (and before the broken chunk of ``malformed``).
``drop_every=N``
    drop the connection each time the stream reaches a multiple of N records
    past ``start``: positions in the whole stream, so an SSE client that
    resumes with ``Last-Event-ID`` sees a drop after every N events, and the
    stream still ends cleanly once ``count`` is reached (``count`` wins over a
    fault at the same position).  Formats that do not resume restart at
    ``start``, so for them it is a drop after N records of each response.
``stall_after=N``, ``stall_for=SECONDS``
    after N records send nothing at all (no keep-alives either) but keep the
    connection open; after ``stall_for`` seconds carry on (default: forever).
``malformed=1``
    with ``drop_after`` or ``drop_every``: the drop ends with a broken chunk
    (a chunk-size line that is not hex), written to the socket past the
    chunked encoder (and gzip), before the connection closes.
``bad_length_after=N``
    (``length``) after N records, a length line that is not a number, then
    the stream carries on as if nothing happened.
``status=CODE``, ``retry_after=SECONDS``
    answer CODE (204 or 300..599) with a JSON-lines error body (none for 204),
    and ``Retry-After: SECONDS`` when given, instead of streaming.
``fail_times=K``
    the faults above apply only to the first K requests with this exact path
    and query (counted per emulator); later ones stream normally, so "fail
    twice, then succeed" is ``status=503&fail_times=2``.  Default: every request.

Kubernetes watch: ``GET /api/v1/pods?watch=true`` (or
``/api/v1/namespaces/NS/pods``; ``watch=1`` too).  Each event is one JSON line,
``{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":
"pod-K","namespace":"default","resourceVersion":"RV"},"seq":RV}}``, in a
chunked ``application/json`` 200 (the namespace is NS on the namespaced
path); RV counts 1, 2, 3 ..., pod ``K`` is
``(RV-1) % objects + 1``, ``ADDED`` the first time a name appears, then
``MODIFIED``.  Options, as strict as ``/firehose``'s:

``resourceVersion=RV``
    send the events after RV; absent, empty or 0: from the oldest event kept
    (every event, as a relist would see them).
``allowWatchBookmarks=true``, ``bookmark_every=N``
    both: after every N events of this response, a ``BOOKMARK`` line carrying
    the last event's RV (annotated ``k8s.io/initial-events-end``).  A client
    that does not allow bookmarks gets none.
``objects=N``
    pods the events cycle over (default 10).
``count=N``, ``rate=PER_SECOND``
    events in the history, after the last one the body ends cleanly (as a
    watch's timeout ends it; a resume at or past the end gets an empty body);
    0 (default): endless.  Events per second, as for ``/firehose``.
``compacted=RV``
    events up to RV are gone: a ``resourceVersion`` X with 0 < X < RV gets
    one in-stream ``ERROR`` line holding the ``Status`` ``code: 410``,
    ``reason: Expired``, ``message: too old resource version: X (RV)``, and
    the body ends cleanly (``faults["expired"]``); without a resourceVersion
    the watch starts at RV+1.
``drop_every=N``
    drop the connection (as ``/firehose``'s drop) each time the stream reaches
    an RV that is a multiple of N, so a client that resumes from the last RV
    it saw sees a drop every N events; ``count`` wins at the same position.
``error_after=N``
    after N events of this response, an in-stream ``ERROR`` line (``Status``
    ``code: 500``, ``reason: InternalError``), then the stream goes on
    (``faults["error"]``).
``fail_times=K``
    ``drop_every`` and ``error_after`` apply to the first K requests with this
    exact path and query only, as for ``/firehose``.

CouchDB continuous changes: ``GET /DB/_changes?feed=continuous``, any DB (no
other ``feed`` is emulated).  Change N (1, 2, 3 ...) is one line,
``{"seq":SEQ,"id":"doc-N","changes":[{"rev":"1-<32 hex>"}]}``, in a chunked
``application/json`` 200.  Options, as strict as ``/firehose``'s:

``since=S``
    start after change S: ``0`` (default), a seq as the feed gave it (``N``
    or ``N-g1AAAA...``: its leading number counts), or ``now``: after the
    last change of a ``count`` history (so only the ``last_seq`` line), and
    for an endless one its start (as ``0``).
``seq=string|number``
    ``string`` (default): CouchDB 2+ opaque seqs ``"N-g1AAAAB0eJzLYWBg..."``;
    ``number``: pouchdb-server's integers.
``count=N``
    changes in the history; after the last one a ``{"last_seq":SEQ,
    "pending":0}`` line and the body ends cleanly, as CouchDB does when its
    ``timeout`` passes (a resume at the end gets only that line); 0
    (default): endless.
``heartbeat=MS``
    a blank line after MS milliseconds of silence (``true``: 60000); silence
    only happens with ``rate``.
``rate=PER_SECOND``, ``drop_every=N``, ``fail_times=K``
    as for the watch: changes per second; a drop each time the stream
    reaches a change number that is a multiple of N (``count`` and its
    ``last_seq`` win at the same position); drops for the first K requests
    with this exact path and query only.

``/stats`` adds, per ``/firehose`` GET in arrival order (aligned lists, the
last 10,000 kept): ``request_times`` (the emulator clock's seconds) and
``last_event_ids`` (the ``Last-Event-ID`` header as sent, ``null`` when
absent); and ``faults``, how many of each fault were carried out.  Once the
first watch came, ``resource_versions``: per watch GET in arrival order (the
last 10,000), its ``resourceVersion`` as sent, ``null`` when absent; and
likewise, once the first changes feed came, ``since_values``: each ``_changes``
GET's ``since``.
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
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import quote

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

from ._reactor import global_reactor, or_global_reactor

__all__ = [
    "ChangesEncoder",
    "ChangesOptions",
    "ChangesResource",
    "Drop",
    "Fault",
    "FirehoseOptions",
    "FirehoseResource",
    "FirehoseRoot",
    "FirehoseSite",
    "FirehoseStats",
    "HttpbinLinesEncoder",
    "Inject",
    "JsonLinesEncoder",
    "LengthEncoder",
    "OptionError",
    "RawConnection",
    "RecordEncoder",
    "RecordStreamProducer",
    "ResponseTarget",
    "SSEEncoder",
    "Stall",
    "StatsResource",
    "StatusResource",
    "StreamResource",
    "WatchEventEncoder",
    "WatchOptions",
    "WatchResource",
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
# /stats keeps this many of the newest per-request entries.
MAX_REQUEST_LOG = 10_000
# What the faults put on the wire.  A chunk-size line must be hex digits.
MALFORMED_CHUNK = b"zz\r\nthis is not a chunk\r\n"
BAD_LENGTH_LINE = b"twelve\r\n"
FORMATS = ("lines", "sse", "length")


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
    #: Per ``/firehose`` GET, oldest first: when it arrived (clock seconds) and
    #: its ``Last-Event-ID`` header (None when absent).  Aligned by index.
    request_times: list[float] = dataclasses.field(default_factory=list)
    last_event_ids: list[str | None] = dataclasses.field(default_factory=list)
    #: Faults carried out, by kind: status, drop, stall, malformed, bad_length,
    #: error (a watch's in-stream ERROR), expired (a watch's in-stream 410).
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Per watch GET, oldest first: its ``resourceVersion`` as sent (None when
    #: absent).  Left out of ``/stats`` until the first watch.
    resource_versions: list[str | None] = dataclasses.field(
        default_factory=list, metadata={"omit_empty": True}
    )
    #: Per ``_changes`` GET, oldest first: its ``since`` as sent (None when
    #: absent).  Left out of ``/stats`` until the first changes feed.
    since_values: list[str | None] = dataclasses.field(
        default_factory=list, metadata={"omit_empty": True}
    )

    def note_request(self, when: float, last_event_id: str | None) -> None:
        """Log one ``/firehose`` GET, keeping the newest ``MAX_REQUEST_LOG``."""
        self.request_times.append(when)
        self.last_event_ids.append(last_event_id)
        excess = len(self.request_times) - MAX_REQUEST_LOG
        if excess > 0:
            del self.request_times[:excess]
            del self.last_event_ids[:excess]

    def note_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    @staticmethod
    def _note(values: list[str | None], value: str | None) -> None:
        """Append to a per-request list, keeping the newest ``MAX_REQUEST_LOG``."""
        values.append(value)
        excess = len(values) - MAX_REQUEST_LOG
        if excess > 0:
            del values[:excess]

    def note_since(self, since: str | None) -> None:
        """Log one ``_changes`` GET's ``since``."""
        self._note(self.since_values, since)

    def note_watch(self, resource_version: str | None) -> None:
        """Log one watch GET's ``resourceVersion``."""
        self._note(self.resource_versions, resource_version)

    def to_json(self) -> bytes:
        """Serialise for ``GET /stats``; a mode's lists only once it was used."""
        data = dataclasses.asdict(self)
        for field in dataclasses.fields(self):
            if field.metadata.get("omit_empty") and not data[field.name]:
                del data[field.name]
        return json.dumps(data).encode("ascii") + b"\n"


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


class _PaddedJsonEncoder:
    """``{"id":N,"pad":"xx.."}`` objects padded to exactly ``size`` bytes, framed.

    When ``size`` is too small to hold the padded form for an id, the object is
    ``{"id":N}`` unpadded (so its length differs from ``size``).  Subclasses
    frame the object; the framed template is built once per id digit count,
    with ``%d`` where the id goes (``_IDS`` times per record).
    """

    _OVERHEAD = len(b'{"id":,"pad":""}')
    _IDS = 1

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self._templates: dict[int, bytes] = {}

    def _json(self, digits: int) -> bytes:
        """The object's ``%d`` template for ids of this many digits."""
        pad = self.size - self._OVERHEAD - digits
        if pad >= 0:
            return b'{"id":%d,"pad":"' + b"x" * pad + b'"}'
        return b'{"id":%d}'

    def _frame(self, body: bytes, body_len: int) -> bytes:
        """Wrap the object's template (``body_len`` bytes once formatted)."""
        raise NotImplementedError

    def _template(self, digits: int) -> bytes:
        template = self._templates.get(digits)
        if template is None:
            body = self._json(digits)
            template = self._frame(body, len(body) - 2 + digits)
            self._templates[digits] = template
        return template

    def encode(self, first_id: int, count: int) -> bytes:
        """Format in runs of equal digit count, so each run has one template."""
        if first_id < 0:
            raise ValueError("ids must be >= 0")
        parts: list[bytes] = []
        i = first_id
        end = first_id + count
        twice = self._IDS == 2
        while i < end:
            digits = len(b"%d" % i)
            run_end = min(end, 10**digits)
            template = self._template(digits)
            if twice:
                parts.append(b"".join([template % (n, n) for n in range(i, run_end)]))
            else:
                parts.append(b"".join([template % n for n in range(i, run_end)]))
            i = run_end
        return parts[0] if len(parts) == 1 else b"".join(parts)


class JsonLinesEncoder(_PaddedJsonEncoder):
    """JSON lines: each padded object followed by ``terminator``."""

    def __init__(self, size: int = DEFAULT_SIZE, terminator: bytes = b"\n") -> None:
        super().__init__(size)
        self.terminator = terminator
        self.record_bytes = max(size, len(b'{"id":0}')) + len(terminator)
        self.keepalive = terminator

    def _frame(self, body: bytes, body_len: int) -> bytes:
        return body + self.terminator


class SSEEncoder(_PaddedJsonEncoder):
    """Server-sent events: ``id: N``, ``data: {object}``, a blank line.

    ``eol`` ends every line (``\\n`` or ``\\r\\n``); a keep-alive is an
    empty comment line.
    """

    _IDS = 2

    def __init__(self, size: int = DEFAULT_SIZE, eol: bytes = b"\n") -> None:
        super().__init__(size)
        self.eol = eol
        self.record_bytes = max(size, len(b'{"id":0}')) + 16 + 3 * len(eol)
        self.keepalive = b":" + eol

    def _frame(self, body: bytes, body_len: int) -> bytes:
        eol = self.eol
        return b"id: %d" + eol + b"data: " + body + eol + eol

    def retry_field(self, ms: int) -> bytes:
        """A ``retry`` field in a block of its own (it dispatches no event)."""
        return b"retry: %d" % ms + self.eol + self.eol


class LengthEncoder(_PaddedJsonEncoder):
    """Twitter's ``delimited=length``: ``N\\r\\n{object}\\r\\n``.

    ``N`` is the byte count of the object and its ``\\r\\n``; a keep-alive is
    a blank line.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        super().__init__(size)
        self.record_bytes = max(size, len(b'{"id":0}')) + 8
        self.keepalive = b"\r\n"

    def _frame(self, body: bytes, body_len: int) -> bytes:
        return b"%d\r\n" % (body_len + 2) + body + b"\r\n"


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


class RawConnection(Protocol):
    """The connection under a response, for faults that break the protocol."""

    def write_raw(self, data: bytes) -> None:
        """Put bytes on the wire as they are: no chunked encoding, no gzip."""
        ...

    def close(self) -> None:
        """Flush what was written, then close the connection."""
        ...


@dataclasses.dataclass(frozen=True)
class Stall:
    """Send nothing for ``seconds`` (None: for good), the connection open."""

    seconds: float | None = None
    kind: ClassVar[str] = "stall"


@dataclasses.dataclass(frozen=True)
class Drop:
    """Close the connection mid-body.

    With ``mid``, half of the next record goes out first; then ``raw`` (say,
    :data:`MALFORMED_CHUNK`) is written past the chunked encoder and gzip.
    """

    mid: bool = False
    raw: bytes = b""

    @property
    def kind(self) -> str:
        return "malformed" if self.raw else "drop"


@dataclasses.dataclass(frozen=True)
class Inject:
    """Splice bytes into the body (before gzip), then carry on.

    ``kind`` names the fault in ``/stats``: a bad length line by default, an
    in-stream watch ``ERROR`` for ``error_after``.
    """

    data: bytes = BAD_LENGTH_LINE
    kind: str = "bad_length"


Fault = Stall | Drop | Inject

# At one position: what carries on first, what ends the connection last.
_FAULT_ORDER = {Inject: 0, Stall: 1, Drop: 2}


class _RequestConnection:
    """:class:`RawConnection` for a twisted.web request on TCP."""

    def __init__(self, request: Request) -> None:
        # Kept now: the request forgets its channel once it is finished.
        self._channel: Any = request.channel

    def write_raw(self, data: bytes) -> None:
        self._channel.transport.write(data)

    def close(self) -> None:
        # The channel's loseConnection unregisters it as the transport's
        # producer first, so the flush cannot turn into a resume instead.
        self._channel.loseConnection()


@implementer(IPushProducer)
class RecordStreamProducer:
    """Streams an encoder's records into a request under TCP flow control.

    The body is one continuous byte stream cut into ``chunk``-sized writes, so
    records straddle writes the way they straddle TCP segments in the wild.
    With ``rate == 0`` it writes until the transport pauses it (the transport
    calls ``pauseProducing`` from inside ``write`` when its buffer is full);
    with ``rate > 0`` a timer writes the records that are due.

    ``preamble`` goes out before the first record.  ``faults`` are
    ``(position, fault)`` pairs: a fault happens once exactly ``position``
    records of this response have been written (and before the next one is
    generated); reaching ``limit`` at the same position ends the response
    cleanly instead.  A :class:`Drop` needs ``connection``.
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
        gzip_buffer: bool = False,
        preamble: bytes = b"",
        faults: Sequence[tuple[int, Fault]] = (),
        connection: RawConnection | None = None,
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        if any(position < 0 for position, _ in faults):
            raise ValueError("fault positions must be >= 0")
        if connection is None and any(isinstance(f, Drop) for _, f in faults):
            raise ValueError("a drop needs a connection")
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
        self._sync_flush = not gzip_buffer
        record_bytes = max(1, encoder.record_bytes)
        self._batch = max(1, BATCH_BYTES // record_bytes)
        self._pump_records = max(1, MAX_PUMP_BYTES // record_bytes)
        self._buf = preamble  # generated bytes not yet written, from _pos on
        self._pos = 0
        self._generated = len(preamble)  # stream offset of the end of all generated
        self._sent = 0  # stream offset of the end of everything written
        self._marks: deque[tuple[int, int]] = deque()  # (batch end, records)
        self._emitted = 0  # records generated so far
        self._t0 = 0.0
        self._last_activity = 0.0
        self._paused = False
        self._done = False
        self._call: IDelayedCall | None = None
        self._faults: deque[tuple[int, Fault]] = deque(
            sorted(faults, key=lambda f: (f[0], _FAULT_ORDER[type(f[1])]))
        )
        self._connection = connection
        self._stalled = False
        self._stalled_at = 0.0
        self._stall_call: IDelayedCall | None = None
        self._wrote = False  # anything written to the request yet

    def start(self) -> None:
        """Register on the request and write the first batch."""
        self._stats.active += 1
        now = self._clock.seconds()
        self._t0 = now
        self._last_activity = now
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._lost)
        self._pump()
        if not (self._wrote or self._done):
            # Nothing to send yet (a stall at 0): the headers go out anyway,
            # as a real stream's do, so the client sees a silent body.
            self._request.write(b"")

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
        """The stream is not over (``limit`` not reached)."""
        return self._left is None or self._left > 0

    def _quota(self, count: int) -> int:
        """How many of ``count`` records may be generated before a stop point."""
        if self._left is not None:
            count = min(count, self._left)
        if self._faults:
            count = min(count, self._faults[0][0] - self._emitted)
        return count

    def _generate(self, count: int) -> bytes:
        count = self._quota(count)
        if count <= 0:
            return b""
        if self._left is not None:
            self._left -= count
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
        while generate and self._quota(1) > 0:
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
        self._wrote = True
        if self._compressor is not None:
            # A sync flush per write lets the client decode as data arrives.
            data = self._compressor.compress(data)
            if self._sync_flush:
                data += self._compressor.flush(zlib.Z_SYNC_FLUSH)
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
        if count > 0 and self._quota(1) > 0:
            data = self._generate(count)
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        return due > count

    def _pump(self) -> None:
        """Write until paused, finished, or this reactor turn's quota is used."""
        self._call = None
        if self._done or self._paused or self._stalled:
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
        if self._faults and self._faults[0][0] <= self._emitted:
            self._fault(self._faults.popleft()[1])
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

    def _fault(self, fault: Fault) -> None:
        """Everything before the fault is written: carry it out."""
        self._stats.note_fault(fault.kind)
        if isinstance(fault, Inject):
            self._stats.bytes_written += len(fault.data)
            self._emit(fault.data)
            if not (self._paused or self._done):
                self._call = self._clock.callLater(0, self._pump)
        elif isinstance(fault, Stall):
            self._stalled = True
            self._stalled_at = self._clock.seconds()
            if fault.seconds is not None:
                self._stall_call = self._clock.callLater(fault.seconds, self._end_stall)
        else:
            connection = self._connection
            assert connection is not None  # checked in __init__
            if fault.mid:
                record = self._encoder.encode(self._next_id, 1)
                half = record[: max(1, len(record) // 2)]
                self._stats.bytes_written += len(half)
                self._emit(half)
            self._close()
            if fault.raw:
                connection.write_raw(fault.raw)
            connection.close()

    def _end_stall(self) -> None:
        self._stall_call = None
        self._stalled = False
        now = self._clock.seconds()
        # Rate mode carries on at its pace instead of catching up on the stall.
        self._t0 += now - self._stalled_at
        self._last_activity = now
        self._pump()

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
        if self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None
        self._stalled = False
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


def _reject_unknown(
    args: Mapping[bytes, Sequence[bytes]], names: frozenset[bytes]
) -> None:
    unknown = sorted(name for name in args if name not in names)
    if unknown:
        shown = unknown[0].decode("utf-8", "replace")
        raise OptionError(f"unknown option {shown!r}")


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


def _optional_int(
    args: Mapping[bytes, Sequence[bytes]],
    name: bytes,
    low: int = 0,
    high: int | None = None,
) -> int | None:
    if _single(args, name) is None:
        return None
    return _int_option(args, name, 0, low, high)


def _optional_float(args: Mapping[bytes, Sequence[bytes]], name: bytes) -> float | None:
    if _single(args, name) is None:
        return None
    return _float_option(args, name, 0.0)


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
    gzip_buffer: bool = False
    format: str = "lines"
    retry: int | None = None
    drop_after: int | None = None
    drop_mid: bool = False
    drop_every: int | None = None
    stall_after: int | None = None
    stall_for: float | None = None
    malformed: bool = False
    bad_length_after: int | None = None
    status: int | None = None
    retry_after: int | None = None
    fail_times: int | None = None

    NAMES = frozenset(
        [
            b"count",
            b"size",
            b"start",
            b"rate",
            b"chunk",
            b"keepalive",
            b"crlf",
            b"gzip",
            b"gzip_buffer",
            b"format",
            b"retry",
            b"drop_after",
            b"drop_mid",
            b"drop_every",
            b"stall_after",
            b"stall_for",
            b"malformed",
            b"bad_length_after",
            b"status",
            b"retry_after",
            b"fail_times",
        ]
    )

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> FirehoseOptions:
        """Parse ``request.args`` strictly, so a typo fails loudly with a 400.

        Raises :class:`OptionError` for unknown names, repeated names, values
        that are not in range, and options that make no sense without another
        (``retry`` without ``format=sse``, ``stall_for`` without
        ``stall_after``, ``fail_times`` without a fault, ...).
        """
        _reject_unknown(args, cls.NAMES)
        raw_format = _single(args, b"format")
        wire = "lines" if raw_format is None else raw_format.decode("latin-1")
        if wire not in FORMATS:
            raise OptionError(f"format must be one of: {', '.join(FORMATS)}")
        status = _optional_int(args, b"status", high=999)
        if status is not None and status != 204 and not 300 <= status <= 599:
            raise OptionError("status must be 204 or 300..599")
        options = cls(
            count=_int_option(args, b"count", 0),
            size=_int_option(args, b"size", DEFAULT_SIZE, high=MAX_SIZE),
            start=_int_option(args, b"start", 0),
            rate=_float_option(args, b"rate", 0.0),
            chunk=_int_option(args, b"chunk", DEFAULT_CHUNK, low=1, high=MAX_CHUNK),
            keepalive=_float_option(args, b"keepalive", 0.0),
            crlf=_bool_option(args, b"crlf", False),
            gzip=_bool_option(args, b"gzip", False),
            gzip_buffer=_bool_option(args, b"gzip_buffer", False),
            format=wire,
            retry=_optional_int(args, b"retry"),
            drop_after=_optional_int(args, b"drop_after"),
            drop_mid=_bool_option(args, b"drop_mid", False),
            drop_every=_optional_int(args, b"drop_every", low=1),
            stall_after=_optional_int(args, b"stall_after"),
            stall_for=_optional_float(args, b"stall_for"),
            malformed=_bool_option(args, b"malformed", False),
            bad_length_after=_optional_int(args, b"bad_length_after"),
            status=status,
            retry_after=_optional_int(args, b"retry_after"),
            fail_times=_optional_int(args, b"fail_times"),
        )
        options._check_combinations()
        return options

    def _check_combinations(self) -> None:
        needs = [
            (self.retry is not None, self.format == "sse", "retry needs format=sse"),
            (self.gzip_buffer, self.gzip, "gzip_buffer needs gzip=1"),
            (self.crlf, self.format != "length", "crlf does not apply to length"),
            (
                self.bad_length_after is not None,
                self.format == "length",
                "bad_length_after needs format=length",
            ),
            (
                self.drop_mid,
                self.drop_after is not None or self.drop_every is not None,
                "drop_mid needs drop_after or drop_every",
            ),
            (
                self.malformed,
                self.drop_after is not None or self.drop_every is not None,
                "malformed needs drop_after or drop_every",
            ),
            (
                self.stall_for is not None,
                self.stall_after is not None,
                "stall_for needs stall_after",
            ),
            (
                self.retry_after is not None,
                self.status is not None,
                "retry_after needs status",
            ),
            (
                self.fail_times is not None,
                self.has_faults,
                "fail_times needs a fault option",
            ),
        ]
        for given, required, message in needs:
            if given and not required:
                raise OptionError(message)

    @property
    def has_faults(self) -> bool:
        return self.status is not None or any(
            value is not None
            for value in (
                self.drop_after,
                self.drop_every,
                self.stall_after,
                self.bad_length_after,
            )
        )

    def faults(self, first_id: int) -> list[tuple[int, Fault]]:
        """The stream faults of a response whose first record is ``first_id``."""
        faults: list[tuple[int, Fault]] = []
        if self.stall_after is not None:
            faults.append((self.stall_after, Stall(self.stall_for)))
        drop = Drop(self.drop_mid, MALFORMED_CHUNK if self.malformed else b"")
        if self.drop_after is not None:
            faults.append((self.drop_after, drop))
        if self.drop_every is not None:
            every = self.drop_every
            faults.append((every - (first_id - self.start) % every, drop))
        if self.bad_length_after is not None:
            faults.append((self.bad_length_after, Inject()))
        return faults

    def encoder(self) -> RecordEncoder:
        eol = b"\r\n" if self.crlf else b"\n"
        if self.format == "sse":
            return SSEEncoder(self.size, eol)
        if self.format == "length":
            return LengthEncoder(self.size)
        return JsonLinesEncoder(self.size, eol)

    @property
    def content_type(self) -> bytes:
        return b"text/event-stream" if self.format == "sse" else b"application/json"


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


class _Tries:
    """Requests seen per path and query, for ``fail_times``."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}

    def faulty(self, request: Request, fail_times: int | None) -> bool:
        """Count this request; True if its faults apply (the first K only)."""
        uri = request.uri or b""
        tries = self._seen[uri] = self._seen.get(uri, 0) + 1
        return fail_times is None or tries <= fail_times


class FirehoseResource(_Resource):
    """``GET /firehose``: sized, numbered records under flow control, and faults."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats, clock: IReactorTime) -> None:
        super().__init__()
        self._stats = stats
        self._clock = clock
        self._tries = _Tries()

    def _options(self, request: Request) -> FirehoseOptions | bytes:
        if _leaf_path(request):
            return _plain(request, 404, "no such resource")
        try:
            options = FirehoseOptions.from_args(request.args or {})
        except OptionError as e:
            return _plain(request, 400, f"bad request: {e}")
        accepted = request.getHeader(b"accept-encoding") or b""
        if options.gzip_buffer and b"gzip" not in accepted.lower():
            # As express does: compression only for a client that asks.
            options = dataclasses.replace(options, gzip=False, gzip_buffer=False)
        return options

    def _set_stream_headers(self, request: Request, options: FirehoseOptions) -> None:
        _set_header(request, b"content-type", options.content_type)
        if options.format == "sse":
            _set_header(request, b"cache-control", b"no-cache")
        if options.gzip:
            _set_header(request, b"content-encoding", b"gzip")

    def render_GET(self, request: Request) -> bytes | int:
        """Start a producer; the response ends when ``count`` is reached."""
        raw_id = request.getHeader(b"last-event-id")
        last_id = None if raw_id is None else raw_id.decode("latin-1")
        self._stats.note_request(self._clock.seconds(), last_id)
        options = self._options(request)
        if isinstance(options, bytes):
            return options
        first_id = options.start
        if options.format == "sse" and last_id:
            if not _INT.fullmatch(last_id.encode("latin-1")) or len(last_id) > 18:
                return _plain(request, 400, "bad request: bad Last-Event-ID")
            first_id = max(first_id, int(last_id) + 1)
        faulty = self._tries.faulty(request, options.fail_times)
        if faulty and options.status is not None:
            self._stats.note_fault("status")
            return _error_answer(request, options.status, options.retry_after)
        limit: int | None = None
        if options.count:
            limit = options.start + options.count - first_id
            if limit <= 0:
                # Resumed past the end: the event-stream way to say "stop".
                request.setResponseCode(204)
                return b""
        self._set_stream_headers(request, options)
        encoder = options.encoder()
        preamble = b""
        if isinstance(encoder, SSEEncoder) and options.retry is not None:
            preamble = encoder.retry_field(options.retry)
        RecordStreamProducer(
            request,
            encoder,
            self._stats,
            self._clock,
            first_id=first_id,
            limit=limit,
            rate=options.rate,
            chunk=options.chunk,
            keepalive=options.keepalive,
            gzip=options.gzip,
            gzip_buffer=options.gzip_buffer,
            preamble=preamble,
            faults=options.faults(first_id) if faulty else (),
            connection=_RequestConnection(request),
        ).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only: the default would run an endless stream into nothing."""
        options = self._options(request)
        if isinstance(options, bytes):
            return options
        self._set_stream_headers(request, options)
        return b""


# --- Kubernetes watch -------------------------------------------------------

DEFAULT_WATCH_OBJECTS = 10
_DNS_LABEL = re.compile(rb"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def watch_status_event(code: int, reason: str, message: str) -> bytes:
    """An in-stream watch ``ERROR`` event carrying a ``Status``, one line."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return _compact_json({"type": "ERROR", "object": status}) + b"\n"


class WatchEventEncoder:
    """Kubernetes watch events for resourceVersions ``first_id ..``, one per line.

    Event ``RV`` is about pod ``pod-K``, ``K = (RV - 1) % objects + 1``:
    ``ADDED`` for the first ``objects`` versions, ``MODIFIED`` after.  With
    ``bookmark_every``, a ``BOOKMARK`` carrying the last event's RV follows
    every N events counted from ``first_rv`` (the response's first event).
    """

    def __init__(
        self,
        objects: int = DEFAULT_WATCH_OBJECTS,
        namespace: str = "default",
        bookmark_every: int | None = None,
        first_rv: int = 1,
    ) -> None:
        if objects < 1:
            raise ValueError("objects must be >= 1")
        self._objects = objects
        self._bookmark_every = bookmark_every
        self._first_rv = first_rv
        ns = _compact_json(namespace).replace(b"%", b"%%")
        self._template = (
            b'{"type":"%s","object":{"kind":"Pod","apiVersion":"v1",'
            b'"metadata":{"name":"pod-%d","namespace":' + ns + b","
            b'"resourceVersion":"%d"},"seq":%d}}\n'
        )
        self.record_bytes = len(self._template) + 24
        self.keepalive = b"\n"

    @staticmethod
    def bookmark(rv: int) -> bytes:
        return (
            b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1",'
            b'"metadata":{"resourceVersion":"%d","annotations":'
            b'{"k8s.io/initial-events-end":"true"}}}}\n' % rv
        )

    def encode(self, first_id: int, count: int) -> bytes:
        objects, template = self._objects, self._template
        every, base = self._bookmark_every, self._first_rv
        parts: list[bytes] = []
        for rv in range(first_id, first_id + count):
            kind = b"ADDED" if rv <= objects else b"MODIFIED"
            parts.append(template % (kind, (rv - 1) % objects + 1, rv, rv))
            if every is not None and (rv - base + 1) % every == 0:
                parts.append(self.bookmark(rv))
        return b"".join(parts)


def _stream_position_drop(every: int, first: int) -> tuple[int, Fault]:
    """``drop_every`` for a history numbered from 1 that resumes at ``first``."""
    return every - (first - 1) % every, Drop()


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """The query of ``GET /api/v1/pods?watch=true``; see :meth:`from_args`."""

    resource_version: int = 0
    allow_bookmarks: bool = False
    objects: int = DEFAULT_WATCH_OBJECTS
    count: int = 0
    rate: float = 0.0
    drop_every: int | None = None
    bookmark_every: int | None = None
    compacted: int = 0
    error_after: int | None = None
    fail_times: int | None = None

    NAMES = frozenset(
        [
            b"watch",
            b"resourceVersion",
            b"allowWatchBookmarks",
            b"objects",
            b"count",
            b"rate",
            b"drop_every",
            b"bookmark_every",
            b"compacted",
            b"error_after",
            b"fail_times",
        ]
    )

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> WatchOptions:
        """Parse strictly, as :meth:`FirehoseOptions.from_args` does."""
        _reject_unknown(args, cls.NAMES)
        if not _bool_option(args, b"watch", False):
            raise OptionError("watch must be true: only watches are emulated")
        raw_rv = _single(args, b"resourceVersion") or b"0"
        if not _INT.fullmatch(raw_rv) or len(raw_rv) > 18:
            raise OptionError("resourceVersion must be a decimal resourceVersion")
        options = cls(
            resource_version=int(raw_rv),
            allow_bookmarks=_bool_option(args, b"allowWatchBookmarks", False),
            objects=_int_option(args, b"objects", DEFAULT_WATCH_OBJECTS, low=1),
            count=_int_option(args, b"count", 0),
            rate=_float_option(args, b"rate", 0.0),
            drop_every=_optional_int(args, b"drop_every", low=1),
            bookmark_every=_optional_int(args, b"bookmark_every", low=1),
            compacted=_int_option(args, b"compacted", 0),
            error_after=_optional_int(args, b"error_after"),
            fail_times=_optional_int(args, b"fail_times"),
        )
        if options.fail_times is not None and not (
            options.drop_every is not None or options.error_after is not None
        ):
            raise OptionError("fail_times needs drop_every or error_after")
        return options

    @property
    def first_rv(self) -> int:
        """The first event sent: after ``resourceVersion``, or the oldest kept."""
        return max(self.resource_version, self.compacted) + 1

    @property
    def expired(self) -> bool:
        """``resourceVersion`` asks for events that compaction removed."""
        return 0 < self.resource_version < self.compacted

    def faults(self, first_rv: int) -> list[tuple[int, Fault]]:
        faults: list[tuple[int, Fault]] = []
        if self.drop_every is not None:
            faults.append(_stream_position_drop(self.drop_every, first_rv))
        if self.error_after is not None:
            message = f"emulated internal error (error_after={self.error_after})"
            error = watch_status_event(500, "InternalError", message)
            faults.append((self.error_after, Inject(error, "error")))
        return faults


def _watch_namespace(request: Request) -> str | None:
    """``default`` for ``/api/v1/pods``, NS for ``/api/v1/namespaces/NS/pods``."""
    path = _leaf_path(request)
    if path == [b"v1", b"pods"]:
        return "default"
    namespaced = len(path) == 4 and path[:2] == [b"v1", b"namespaces"]
    if namespaced and path[3] == b"pods" and _DNS_LABEL.fullmatch(path[2]):
        return path[2].decode("ascii")
    return None


class WatchResource(_Resource):
    """``GET /api/v1/pods?watch=true``: a Kubernetes watch over a numbered history."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats, clock: IReactorTime) -> None:
        super().__init__()
        self._stats = stats
        self._clock = clock
        self._tries = _Tries()

    def _options(self, request: Request) -> tuple[WatchOptions, str] | bytes:
        namespace = _watch_namespace(request)
        if namespace is None:
            return _plain(request, 404, "use /api/v1/pods?watch=true")
        try:
            options = WatchOptions.from_args(request.args or {})
        except OptionError as e:
            return _plain(request, 400, f"bad request: {e}")
        _set_header(request, b"content-type", b"application/json")
        return options, namespace

    def render_GET(self, request: Request) -> bytes | int:
        """Stream the events after ``resourceVersion``, or one in-stream 410."""
        raw = _single_raw(request, b"resourceVersion")
        if _watch_namespace(request) is not None:
            self._stats.note_watch(raw)
        parsed = self._options(request)
        if isinstance(parsed, bytes):
            return parsed
        options, namespace = parsed
        first = options.first_rv
        preamble = b""
        limit: int | None = None
        faults: list[tuple[int, Fault]] = []
        if options.expired:
            # What an apiserver says once etcd compacted the asked-for version.
            message = (
                f"too old resource version: {options.resource_version}"
                f" ({options.compacted})"
            )
            preamble = watch_status_event(410, "Expired", message)
            limit = 0
            self._stats.note_fault("expired")
        else:
            if options.count:
                limit = max(0, options.count - first + 1)
            if self._tries.faulty(request, options.fail_times):
                faults = options.faults(first)
        bookmark_every = options.bookmark_every if options.allow_bookmarks else None
        encoder = WatchEventEncoder(options.objects, namespace, bookmark_every, first)
        RecordStreamProducer(
            request,
            encoder,
            self._stats,
            self._clock,
            first_id=first,
            limit=limit,
            rate=options.rate,
            preamble=preamble,
            faults=faults,
            connection=_RequestConnection(request),
        ).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only."""
        parsed = self._options(request)
        return parsed if isinstance(parsed, bytes) else b""


# --- CouchDB continuous changes ---------------------------------------------------

#: ``heartbeat=true`` means CouchDB's default, a minute.
DEFAULT_HEARTBEAT_MS = 60_000
_SINCE = re.compile(rb"([0-9]{1,18})(?:-[A-Za-z0-9_-]+)?")
_REV_MULTIPLIER = 0x9E3779B97F4A7C15F39CC0605CEDC835
_REV_MASK = (1 << 128) - 1


class ChangesEncoder:
    """CouchDB ``_changes`` rows for change numbers ``first_id ..``, one per line.

    Change N is doc ``doc-N``'s first revision.  Its ``seq`` is the number N
    (``numeric``, as pouchdb-server gives it) or an opaque CouchDB 2+ string
    ``"N-g1AAAA..."``.  After change ``last`` comes the ``last_seq`` line.
    """

    def __init__(self, numeric: bool = False, last: int | None = None) -> None:
        self._numeric = numeric
        self._last = last
        self.record_bytes = 110
        self.keepalive = b"\n"

    def seq(self, n: int) -> bytes:
        """The JSON of change N's ``seq``."""
        if self._numeric:
            return b"%d" % n
        return b'"%d-g1AAAAB0eJzLYWBg%08x"' % (n, (n * 2654435761) & 0xFFFFFFFF)

    def last_seq_line(self, n: int) -> bytes:
        return b'{"last_seq":%s,"pending":0}\n' % self.seq(n)

    def encode(self, first_id: int, count: int) -> bytes:
        parts: list[bytes] = []
        for n in range(first_id, first_id + count):
            rev = (n * _REV_MULTIPLIER) & _REV_MASK
            parts.append(
                b'{"seq":%s,"id":"doc-%d","changes":[{"rev":"1-%032x"}]}\n'
                % (self.seq(n), n, rev)
            )
            if n == self._last:
                parts.append(self.last_seq_line(n))
        return b"".join(parts)


@dataclasses.dataclass(frozen=True)
class ChangesOptions:
    """The query of ``GET /DB/_changes?feed=continuous``; see :meth:`from_args`."""

    since: int = 0
    since_now: bool = False
    heartbeat: float = 0.0
    numeric: bool = False
    count: int = 0
    rate: float = 0.0
    drop_every: int | None = None
    fail_times: int | None = None

    NAMES = frozenset(
        [
            b"feed",
            b"since",
            b"heartbeat",
            b"seq",
            b"count",
            b"rate",
            b"drop_every",
            b"fail_times",
        ]
    )

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> ChangesOptions:
        """Parse strictly, as :meth:`FirehoseOptions.from_args` does."""
        _reject_unknown(args, cls.NAMES)
        if _single(args, b"feed") != b"continuous":
            raise OptionError("feed must be continuous: the only feed emulated")
        raw_since = _single(args, b"since")
        since, since_now = 0, raw_since == b"now"
        if raw_since is not None and not since_now:
            match = _SINCE.fullmatch(raw_since)
            if match is None:
                raise OptionError("since must be 0, now or a seq the feed gave")
            since = int(match.group(1))
        raw_heartbeat = _single(args, b"heartbeat")
        if raw_heartbeat is not None and raw_heartbeat.lower() == b"true":
            heartbeat_ms = DEFAULT_HEARTBEAT_MS
        else:
            heartbeat_ms = _int_option(args, b"heartbeat", 0, low=1)
        raw_seq = _single(args, b"seq") or b"string"
        if raw_seq not in (b"string", b"number"):
            raise OptionError("seq must be string or number")
        options = cls(
            since=since,
            since_now=since_now,
            heartbeat=heartbeat_ms / 1000,
            numeric=raw_seq == b"number",
            count=_int_option(args, b"count", 0),
            rate=_float_option(args, b"rate", 0.0),
            drop_every=_optional_int(args, b"drop_every", low=1),
            fail_times=_optional_int(args, b"fail_times"),
        )
        if options.fail_times is not None and options.drop_every is None:
            raise OptionError("fail_times needs drop_every")
        return options

    @property
    def after(self) -> int:
        """The last change the client has: the feed starts with the next one.

        ``since=now`` is the end of the history (``count``); an endless one
        has no end, so there it is the start, as ``since=0``.
        """
        return self.count if self.since_now else self.since


class ChangesResource(_Resource):
    """``GET /DB/_changes?feed=continuous``: CouchDB's continuous changes feed."""

    isLeaf = True

    def __init__(self, stats: FirehoseStats, clock: IReactorTime) -> None:
        super().__init__()
        self._stats = stats
        self._clock = clock
        self._tries = _Tries()

    def _options(self, request: Request) -> ChangesOptions | bytes:
        if _leaf_path(request) != [b"_changes"]:
            return _plain(request, 404, "use /DB/_changes?feed=continuous")
        try:
            options = ChangesOptions.from_args(request.args or {})
        except OptionError as e:
            return _plain(request, 400, f"bad request: {e}")
        _set_header(request, b"content-type", b"application/json")
        return options

    def render_GET(self, request: Request) -> bytes | int:
        """Stream the changes after ``since``; with ``count``, end on last_seq."""
        self._stats.note_since(_single_raw(request, b"since"))
        options = self._options(request)
        if isinstance(options, bytes):
            return options
        first = options.after + 1
        limit: int | None = None
        encoder = ChangesEncoder(options.numeric, options.count or None)
        preamble = b""
        if options.count:
            limit = max(0, options.count - first + 1)
            if not limit:
                # Nothing newer: CouchDB's timeout answer, right away.
                preamble = encoder.last_seq_line(options.count)
        faults: list[tuple[int, Fault]] = []
        if options.drop_every is not None and self._tries.faulty(
            request, options.fail_times
        ):
            faults.append(_stream_position_drop(options.drop_every, first))
        RecordStreamProducer(
            request,
            encoder,
            self._stats,
            self._clock,
            first_id=first,
            limit=limit,
            rate=options.rate,
            keepalive=options.heartbeat,
            preamble=preamble,
            faults=faults,
            connection=_RequestConnection(request),
        ).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only."""
        options = self._options(request)
        return options if isinstance(options, bytes) else b""


def _single_raw(request: Request, name: bytes) -> str | None:
    """A query value as sent, for ``/stats`` (the first one if repeated)."""
    values = (request.args or {}).get(name)
    return values[0].decode("latin-1") if values else None


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


def _error_answer(
    request: Request,
    code: int,
    retry_after: int | None = None,
    lines: int = DEFAULT_STATUS_LINES,
) -> bytes:
    """Answer ``code`` with a JSON-lines error body (none for 204 and 304)."""
    request.setResponseCode(code)
    if retry_after is not None:
        _set_header(request, b"retry-after", b"%d" % retry_after)
    if code in (204, 304):
        return b""
    phrase = json.dumps(RESPONSES.get(code, b"Error").decode("latin-1"))
    escaped = phrase.encode("ascii").replace(b"%", b"%%")
    template = b'{"error":' + escaped + b',"id":%d}\n'
    _set_header(request, b"content-type", b"application/json")
    return b"".join([template % i for i in range(lines)])


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
        return _error_answer(request, code, lines=lines)


class RedirectResource(_Resource):
    """``GET /redirect/N?to=PATH``: N redirects on this server, then to PATH."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        path = _leaf_path(request)
        raw = path[0] if len(path) == 1 else b""
        if not re.fullmatch(rb"[0-9]{1,3}", raw):
            return _plain(request, 404, "use /redirect/N?to=PATH")
        hops = int(raw)
        target = _single(request.args or {}, b"to") or b"/stream/1"
        if not target.startswith(b"/"):
            return _plain(request, 400, "bad request: to must be a path")
        query = b"?to=" + quote(target, safe="").encode("ascii")
        location = b"/redirect/%d%s" % (hops - 1, query) if hops > 1 else target
        _set_header(request, b"location", location)
        return _plain(request, 302, f"redirect to {location.decode('latin-1')}")


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
    &format=lines|sse|length&retry=MS (sse; Last-Event-ID resumes)
    faults: &drop_after=N&drop_mid=1 &drop_every=N &stall_after=N&stall_for=S
    &malformed=1 (with a drop) &bad_length_after=N &status=CODE&retry_after=S
    &fail_times=K (faults for the first K requests only) &gzip_buffer=1
GET /api/v1/pods?watch=true&resourceVersion=RV&allowWatchBookmarks=true
    &bookmark_every=N&objects=N&count=&rate=&compacted=RV&drop_every=N
    &error_after=N&fail_times=K
GET /DB/_changes?feed=continuous&since=0|now|SEQ&seq=string|number&count=
    &heartbeat=MS&rate=&drop_every=N&fail_times=K
GET /status/CODE?lines=N
GET /redirect/N?to=PATH
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
            b"redirect": RedirectResource(),
            b"api": WatchResource(self.stats, clock),
            b"stats": StatsResource(self.stats),
        }
        self._changes = ChangesResource(self.stats, clock)

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Every request passes here exactly once, so this is where we count."""
        self.stats.requests += 1
        if path == b"":
            return self
        if _leaf_path(request) == [b"_changes"]:
            return self._changes  # /DB/_changes, whatever DB is called
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
    clock = or_global_reactor(clock)
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
    reactor = global_reactor()

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
