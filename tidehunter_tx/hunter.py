"""``Hunter``: one HTTP stream into one sink, with an exact limit and an off switch.

This is the seed library's ``Hunter`` made asynchronous: ``tide_on(limit)``
returns a Deferred that fires with the response once the run is over (the
limit was reached, the counter was switched off, or the server ended the
stream), and ``tide_off()`` ends the run at once.  ``records()`` and
``batches()`` iterate the run's records as they arrive.

A hunter talks to one admission gate (:mod:`tidehunter_tx.gate`) and is its
listener; its run is the state machine of :mod:`tidehunter_tx._run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urljoin, urlsplit

from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredQueue,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
)
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ._client import MAX_HEADER_BYTES, MAX_HEADERS, BoundedPool
from ._describe import describe, loggable_url, one_line, public_url, redact_url
from ._inflate import CompressionStarved, InflatingAgent
from ._reactor import or_global_reactor
from ._run import BackoffWait, make_run
from ._secrets import Secrets, url_secrets
from ._version import USER_AGENT
from .auth import Signer, signer_secrets
from .counter import Counter, StateCounter
from .framing import (
    DEFAULT_MAX_RECORD_BYTES,
    RECORD_FORMATS,
    Framer,
    JsonRecords,
    SSEFramer,
    make_framer,
)
from .gate import Ending, IGate, IGateListener, PositionStore
from .policy import Backoff, FailureKind, classify
from .protocol import StreamOutcome, StreamProtocol, StreamStats
from .resume import Resume, ResumeRestart, ResumingFramer, make_resume, watch_body
from .sinks import (
    DEFAULT_HIGH_WATERMARK,
    DEFAULT_QUEUE_BUDGET_BYTES,
    QueueSink,
    RecordQueue,
    Sink,
)
from .status import check_status

__all__ = [
    "AlreadyRunning",
    "ConnectFailed",
    "GaveUp",
    "HTTPStatusError",
    "Hunter",
    "StreamFailed",
    "loggable_url",
    "public_url",
    "redact_url",
]

if TYPE_CHECKING:
    from .metrics import HunterCollector

log = Logger()


def load_ca_file(path: str) -> Any:
    """Trust every certificate in a PEM file (a bundle may hold several).

    Verification stays on; this replaces the system's trust for this feed.
    """
    from twisted.internet import ssl

    with open(path, "rb") as file:
        pem = file.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
    if not blocks:
        raise ValueError(f"{path} holds no PEM certificate")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(block.strip()) for block in blocks]
    )


HeadersLike = Mapping[str | bytes, str | bytes | Sequence[str | bytes]]

#: How much of an error response's body is kept for the error message.
ERROR_EXCERPT_BYTES = 1024

COMPRESSIONS = ("auto", "gzip", "identity")
#: With ``compression="auto"``: a gzip body that inflates to nothing for this
#: long is taken for a compressor that buffers.
STARVED_GZIP_SECONDS = 5.0


class HTTPStatusError(Exception):
    """The server answered with a status other than 2xx; nothing was queued."""

    def __init__(
        self,
        method: str,
        url: str,
        code: int,
        phrase: str,
        body: bytes,
        retry_after: str | None = None,
        secrets: Secrets | None = None,
    ):
        self.method = method
        self.url = url
        self.code = code
        self.phrase = phrase
        self.body = body
        self.retry_after = retry_after
        # One line: an error body is often several JSON lines.
        # Masked before it is cut, so no secret's first half survives the
        # cut: a 401 body may echo the request, credentials and all.
        text = body.decode("utf-8", "replace")
        if secrets is not None:
            text = secrets.mask(text)
        excerpt = " ".join(text[:200].split())
        #: The body's first 200 characters on one line, secrets masked.
        self.excerpt = excerpt
        message = f"{method} {url} answered HTTP {code} {phrase}".rstrip()
        super().__init__(f"{message}: {excerpt}" if excerpt else message)


class StreamFailed(Exception):
    """The connection broke mid-stream (reset, malformed chunking, ...)."""

    def __init__(self, url: str, records: int, reason: Failure | None):
        self.url = url
        self.records = records
        self.reason = reason
        cause = "unknown cause" if reason is None else describe(reason)
        super().__init__(f"stream {url} broke after {records} records: {cause}")


class AlreadyRunning(Exception):
    """``tide_on`` was called while a run of the same hunter was still on."""


class GaveUp(Exception):
    """The reconnect policy gave up (a fatal status, or too many tries)."""

    def __init__(self, reason: str, error: BaseException | None):
        self.reason = reason
        self.error = error
        super().__init__(reason if error is None else f"{reason}: {error}")


class TooManyRedirects(Exception):
    """The redirects went on past ``max_redirects``: a loop, or a misconfiguration."""


class NoResponseHeaders(TimeoutError):
    """The server did not send its whole response headers in time."""


def _cancelled(error: BaseException) -> bool:
    """``error`` is a cancellation, maybe wrapped in Twisted's failure lists."""
    if isinstance(error, CancelledError):
        return True
    reasons = getattr(error, "reasons", None) or []
    return any(
        isinstance(reason, Failure) and reason.check(CancelledError)
        for reason in reasons
    )


class ConnectFailed(Exception):
    """No response: refused, DNS, TLS verification, header timeout, ..."""

    def __init__(self, url: str, error: BaseException):
        self.url = url
        self.error = error
        super().__init__(f"{url}: {one_line(error)}")


class _Excerpt(Protocol):
    """Reads at most ``limit`` bytes of a body, then hangs up."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if len(self.data) >= self.limit:
            return
        self.data += data[: self.limit - len(self.data)]
        if len(self.data) >= self.limit:
            self.hang_up()

    def hang_up(self) -> None:
        if self.transport is not None and not self.done.called:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))


@implementer(IGateListener)
class Hunter:
    """Streams ``url`` into ``q`` (a ``DeferredQueue`` of ``bytes`` records).

    :param url: the stream.
    :param q: the queue records go into; a :class:`RecordQueue` (an O(1)
        ``DeferredQueue``) by default.  A queue you pass is used as it is, even
        when empty.
    :param sc: the state counter (``count``, ``total``, ``started``,
        ``stopped``, ``start()``, ``stop()``); a consumer's ``sc.stop()``
        ends the run at once.  Its ``gate(sink)`` decides how records are
        admitted (in this process, or in Redis for a shared counter).
    :param framing: how records are cut: ``"lines"``, ``"sse"``, ``"length"``.
    :param max_record_bytes: larger records are skipped and counted.
    :param record_format: ``"lines"`` (the default) delivers each record as
        the feed framed it; ``"json"`` delivers each as one JSON object
        (:class:`~tidehunter_tx.framing.JsonRecords`), with an event stream's
        ``event`` and ``id``.
    :param high_watermark: pause reading from the socket when this many
        records wait in the queue; resume at ``low_watermark`` (default: a
        quarter of the high watermark).  Left at its default (10,000), a run
        with a larger limit may queue up to its limit, within
        ``queue_budget_bytes`` (256 MiB), so that draining ``q`` only after
        ``tide_on`` fires works as it did in the original.
    :param sink: deliver somewhere other than ``q`` (file, Redis, ...).
    :param gate: admit through this gate (for example a
        :class:`~tidehunter_tx.redis.RedisGate` with a Redis sink) instead of
        ``sc.gate(sink)``; then ``sc`` and ``sink`` must not be given.
    :param timeout: seconds to wait for the response headers (all of them).
    :param max_header_bytes: a response whose headers pass this many bytes
        (or ``max_headers`` header lines) is closed and backed off from like
        an HTTP 5xx: a hostile server cannot grow memory with headers.
    :param reconnect: when the stream ends or breaks, connect again as the
        backoff policy says, until the limit is reached or the counter is
        switched off.  Off by default, as in the original library.
    :param backoff: the reconnect policy (default: the hbc policy).
    :param signer: adds credentials to each request's headers (see
        :func:`tidehunter_tx.auth.signer_from_env`).
    :param stall_timeout: seconds without a byte (keep-alives count) after
        which the connection is judged dead; ``None`` never judges.
    :param compression: ``"auto"`` (the default) asks for gzip and, when a
        gzip body gives no byte for :data:`STARVED_GZIP_SECONDS` (a compressor
        that buffers, as pouchdb-server's does), asks again without it for the
        rest of the run; ``"gzip"`` always asks for gzip; ``"identity"``
        never does.  An ``Accept-Encoding`` in ``headers`` replaces ours.
    :param max_redirects: redirects followed per connection; past them the
        run fails with :class:`TooManyRedirects`.  Each one is logged.
    :param redirect_keep_headers: send ``headers``, ``auth`` and the signer's
        credentials to another origin too (by default a redirect to another
        scheme, host or port gets none of them).
    :param resume: where a reconnect (or a restarted run) goes on from:
        ``"kubernetes"`` (``resourceVersion``), ``"couchdb"`` (``since``),
        ``"etcd"`` (``create_request.start_revision`` in the POST body),
        ``"sse"`` (``Last-Event-ID``; what ``framing="sse"`` does anyway), or
        any :class:`~tidehunter_tx.resume.Resume` such as
        ``JsonPointerResume("/cursor", "after")``.  The position is stored
        by the gate with the records it belongs to (:attr:`position`).
    :param feed_id: the name the position is kept under (default: the URL
        without credentials or query), so several feeds can share a counter.
    :param position_store: keeps the position beside the records, e.g. a
        file sink's :class:`~tidehunter_tx.sinks.FileState`; a run starts
        from what it holds.
    :param agent: the ``IAgent`` to request with (then ``ca_file`` cannot be
        given: configure the agent's TLS yourself).
    :param reactor: the reactor (time and TCP) to run on.
    """

    def __init__(
        self,
        url: str,
        q: DeferredQueue[bytes] | None = None,
        sc: Counter | None = None,
        *,
        method: str = "GET",
        headers: HeadersLike | None = None,
        data: bytes | None = None,
        auth: tuple[str, str] | None = None,
        framing: str = "lines",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        record_format: str = "lines",
        high_watermark: int | None = None,
        low_watermark: int | None = None,
        queue_budget_bytes: int = DEFAULT_QUEUE_BUDGET_BYTES,
        sink: Sink | None = None,
        gate: IGate | None = None,
        timeout: float | None = 30.0,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        stall_timeout: float | None = None,
        compression: str = "auto",
        max_redirects: int = 10,
        redirect_keep_headers: bool = False,
        resume: str | Resume | None = None,
        feed_id: str | None = None,
        position_store: PositionStore | None = None,
        agent: IAgent | None = None,
        ca_file: str | None = None,
        signer: Signer | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        if agent is not None and ca_file is not None:
            raise ValueError(
                "give either agent or ca_file: a ca_file would not reach your agent"
            )
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, "
                f"not {compression!r}"
            )
        if gate is not None and (sink is not None or sc not in (None, gate.counter)):
            raise ValueError("a gate brings its own counter and sink: give gate alone")
        reactor = or_global_reactor(reactor)
        parts = urlsplit(url)
        if parts.username is not None and auth is None:
            # user:password@host means basic auth (as in requests); the
            # credentials never travel in the request line.
            auth = (unquote(parts.username), unquote(parts.password or ""))
        self.url = url
        self._request_url = redact_url(url)
        self.q: DeferredQueue[bytes] = RecordQueue() if q is None else q
        self.method = method.upper()
        self.headers = headers
        self.data = data
        self.auth = auth
        base_framer = make_framer(framing, max_record_bytes)
        #: The event stream's own framer, for its header, id and 204.
        self._event_stream = base_framer if isinstance(base_framer, SSEFramer) else None
        if resume == "sse" and self._event_stream is None:
            raise ValueError('resume="sse" needs framing="sse"')
        self.resuming = make_resume(resume) if isinstance(resume, str) else resume
        if self.resuming is not None and self.resuming.name == "etcd":
            watch_body(data)  # a clear error now, not at the first reconnect
        self.framer: Framer = (
            base_framer
            if self.resuming is None
            else ResumingFramer(base_framer, self.resuming)
        )
        if record_format not in RECORD_FORMATS:
            raise ValueError(
                f"record_format must be one of {', '.join(RECORD_FORMATS)}, "
                f"not {record_format!r}"
            )
        #: What the body protocol feeds: the framer, or its records as JSON.
        self._records_framer: Framer = (
            JsonRecords(self.framer) if record_format == "json" else self.framer
        )
        self._queue_sink: QueueSink | None = None
        if gate is None:
            if sink is None:
                sink = queue_sink = QueueSink(
                    self.q,
                    high_watermark or DEFAULT_HIGH_WATERMARK,
                    low_watermark,
                    reactor,
                    budget_bytes=queue_budget_bytes,
                )
                if high_watermark is None:
                    # Only the default watermark makes way for a run's limit:
                    # a watermark you set is the one you get.
                    self._queue_sink = queue_sink
            gate = (StateCounter() if sc is None else sc).gate(sink)
        self.gate: IGate = gate
        self.sc: Counter = gate.counter
        self.sink: Sink | None = sink
        self.gate.set_listener(self)
        if self.resuming is not None or self._event_stream is not None:
            self.gate.keep_positions(
                feed_id if feed_id is not None else public_url(url), position_store
            )
        elif position_store is not None:
            raise ValueError("a position_store needs a feed with positions (resume)")
        self.stats = StreamStats()
        self.timeout = timeout
        self.reconnect = reconnect
        self.backoff = Backoff() if backoff is None else backoff
        self.stall_timeout = stall_timeout
        self.signer = signer
        #: What this hunter sends that no error message or log line may show.
        self.secrets = Secrets(url_secrets(url))
        self.secrets.update(signer_secrets(signer))
        if auth is not None:
            self.secrets.update([auth[1], f"{auth[0]}:{auth[1]}"])
        self._reactor = reactor
        if agent is None:
            pool = BoundedPool(
                reactor, max_header_bytes=max_header_bytes, max_headers=max_headers
            )
            if ca_file is not None:
                policy = BrowserLikePolicyForHTTPS(trustRoot=load_ca_file(ca_file))
                agent = Agent(reactor, contextFactory=policy, pool=pool)
            else:
                agent = Agent(reactor, pool=pool)
        # Under treq's own decoder, which then finds nothing left to inflate.
        self._inflating = InflatingAgent(agent, reactor)
        self._client = HTTPClient(self._inflating)
        self.compression = compression
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, not {max_redirects}")
        self.max_redirects = max_redirects
        self.redirect_keep_headers = redirect_keep_headers
        self._gzip_starved = False  # auto fell back to identity for this hunter
        self._stream_lived: float | None = None  # the last 2xx body's, in seconds
        self._run, self._run_core = make_run()
        self._gate_failure: Failure | None = None
        self._running = False
        self._halted = False
        self._records_before_run = 0
        self._run_over: list[Deferred[None]] = []

    @property
    def safe_url(self) -> str:
        """The URL without credentials, for logs and error messages."""
        return loggable_url(self.url)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def position(self) -> bytes | None:
        """Where the feed stands after the last record delivered (and stored
        with it); what the next run starts from."""
        position: bytes | None = self.gate.position
        return position

    @property
    def delivered(self) -> int:
        """Records this hunter delivered in its current (or last) run."""
        return self.stats.records - self._records_before_run

    @property
    def state(self) -> str:
        """idle, connecting, streaming, paused, backing_off, stopping or stopped."""
        return self._run_core.shown_state

    def tide_on(self, limit: int = 0) -> Deferred[_Response | None]:
        """Start a run; fire with the last response when it is over.

        Fires with ``None`` when the run was switched off before any server
        answered.  Without ``reconnect``, fails with :class:`HTTPStatusError`
        for a non-2xx answer, :class:`ConnectFailed` when no answer came and
        :class:`StreamFailed` when the connection breaks; with it, fails with
        :class:`GaveUp` when the policy gives up.
        """
        if self._running:
            raise AlreadyRunning(f"a run of {self.safe_url} is already on")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self._running = True
        return ensureDeferred(self._run_to_end(limit))

    def tide_off(self) -> None:
        """End the run now: switch the counter off and close the connection."""
        self.gate.stop()
        self._tell_end("switched_off")  # unless the gate's answer told it
        self._halt(Ending.STOPPED)

    def halt(self) -> None:
        """End this hunter's run now, leaving a shared counter on.

        ``tide_off()`` is the off switch of every hunter sharing the counter;
        ``halt()`` stops just this one (a daemon's SIGTERM or AMP Stop).
        """
        self._tell_end("stop_requested")
        self._halt(Ending.STOPPED)

    def _tell_end(self, event: str) -> None:
        """One log event for what ends the run: the first end asked for."""
        if not self._running or self._halted:
            return
        log.info(
            _EVENT_TEXTS[event],
            tidehunter_event=event,
            count=self.sc.count,
            limit=self.sc.limit,
            delivered=self.delivered,
        )

    def _halt(self, ending: Ending) -> None:
        # The run's own flag, set before the machine acts: cancelling a
        # request can finish the run (and start the next) inside the halt.
        if self._running:
            self._halted = True
            self._run.halt(ending)

    def pause(self) -> None:
        """Stop reading from the socket, keeping the connection and the counts.

        The pause holds across reconnects until :meth:`resume`, and a paused
        stream is never judged stalled.
        """
        was_paused = self._run_core.user_paused
        self._run.pause()
        if not was_paused:
            self._tell_pause("paused")

    def resume(self) -> None:
        was_paused = self._run_core.user_paused
        self._run.resume()
        if was_paused:
            self._tell_pause("resumed")

    def _tell_pause(self, event: str) -> None:
        # A pause asked for, by AMP or the API; a full sink's pauses are
        # only counted (status, metrics, the closing line): they come often.
        log.info(
            _EVENT_TEXTS[event],
            tidehunter_event=event,
            delivered=self.delivered,
            state=self._run_core.state,
        )

    def set_limit(self, limit: int) -> None:
        """Change the limit of the run that is on; at or below the count, stop."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.gate.set_limit(limit)

    def settled(self) -> Deferred[None]:
        """Fires once every record read has its fate (a Redis gate answers late)."""
        return self.gate.settled()

    def close(self) -> Deferred[None]:
        """Flush and release the sink and connections (after the run)."""
        return self.gate.close()

    def status(self) -> dict[str, Any]:
        """Counters for people and programs; the fields of ``STATUS_FIELDS``."""
        stats = self.stats
        sc = self.sc
        core = self._run_core
        now = self._reactor.seconds()
        return check_status(
            {
                "state": core.shown_state,
                "url": public_url(self.url),
                "count": sc.count,
                "total": sc.total,
                "limit": sc.limit,
                "bytes": stats.bytes,
                "read": stats.read,
                "records": stats.records,
                "in_flight": self.gate.unconfirmed,
                "spilled": self.gate.spilled,
                "lost": stats.lost,
                "keepalives": self.framer.keepalives,
                "skipped": self.framer.skipped,
                "truncated": stats.truncated,
                "dropped": self.gate.dropped,
                "pauses": stats.pauses,
                "paused_seconds": stats.paused_seconds(now),
                "paused_since": stats.paused_since,
                "queued": len(self.q.pending),
                "batches_in_flight": self.gate.batches_in_flight,
                "reconnects": stats.reconnects,
                "reconnects_by_cause": dict(stats.reconnects_by_cause),
                "stalls": stats.stalls,
                "backoff": core.backoff,
                "retry_in": core.retry_in(now),
                "connected_since": stats.connected_since,
                "last_record_at": stats.last_record_at,
                "last_error": stats.last_error,
                "waiting": self.gate.waiting,
                "position": None
                if self.gate.position is None
                else self.gate.position.decode("utf-8", "replace"),
                "not_records": {}
                if self.resuming is None
                else dict(self.resuming.not_records),
            }
        )

    # -- consuming the run's records

    def metrics(self, labels: Mapping[str, str] | None = None) -> HunterCollector:
        """A Prometheus collector of this hunter's numbers, for your registry:
        ``registry.register(hunter.metrics())``.  Each scrape reads
        :meth:`status`, so the two agree."""
        from .metrics import HunterCollector  # prometheus_client only if asked

        return HunterCollector(self, labels)

    async def records(self) -> AsyncIterator[bytes]:
        """Every record of the run, in order; ends once the run is over and
        everything queued was taken.

        Records already queued are taken without a Deferred each; the stream
        resumes as the queue drains.  Start the run first (``tide_on``).
        """
        q = self.q
        if not isinstance(q, RecordQueue):
            async for record in self._records_one_by_one():
                yield record
            return
        pending = q.pending
        take = pending.popleft
        while True:
            for _ in range(len(pending)):
                yield take()
            q.check_low()
            if pending:
                continue
            if not await self._more_records(q):
                return

    async def batches(self, max_batch: int = 10_000) -> AsyncIterator[list[bytes]]:
        """The run's records as lists of at most ``max_batch``, in order.

        Ends once the run is over and everything queued was taken: the bulk
        way to consume, and the safe one (the stream resumes as it drains).
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        q = self.q
        if not isinstance(q, RecordQueue):
            batch: list[bytes] = []
            async for record in self._records_one_by_one():
                batch.append(record)
                if len(batch) >= max_batch or not q.pending:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        pending = q.pending
        take = pending.popleft
        while True:
            if pending:
                if len(pending) <= max_batch:
                    batch = list(pending)
                    pending.clear()
                else:
                    batch = [take() for _ in range(max_batch)]
                q.check_low()
                yield batch
                continue
            if not await self._more_records(q):
                return

    async def _more_records(self, q: RecordQueue[bytes]) -> bool:
        """Wait until records are queued; False once no more can come."""
        if not self._running:
            await self.gate.settled()  # a Redis gate may still deliver
            return bool(q.pending)
        await q.wait_for_records()
        return True

    async def _records_one_by_one(self) -> AsyncIterator[bytes]:
        """Any ``DeferredQueue``: one ``get()`` each, raced against the run's end."""
        q = self.q
        while True:
            if q.pending:
                yield await q.get()
                continue
            if not self._running:
                await self.gate.settled()
                if not q.pending:
                    return
                continue
            getting = q.get()
            over = self._when_run_over()
            first = await DeferredList(
                [cast(Deferred[object], getting), cast(Deferred[object], over)],
                fireOnOneCallback=True,
                consumeErrors=True,
            )
            if getting.called:
                yield cast(bytes, first[0])
            else:
                getting.cancel()  # the run ended first: take nothing

    def _when_run_over(self) -> Deferred[None]:
        over: Deferred[None] = Deferred()
        if self._running:
            self._run_over.append(over)
        else:
            over.callback(None)
        return over

    # -- IGateListener

    def admitted(self, count: int) -> None:
        self.stats.note_admitted(count, self._reactor.seconds())
        self.backoff.record_arrived()

    def ended(self, ending: Ending, reason: Failure | None) -> None:
        """The gate says the run is over (or refused records: no retry cures it)."""
        if ending is Ending.FAILED and self._gate_failure is None:
            self._gate_failure = reason
        if ending is Ending.LIMIT:
            self._tell_end("limit_reached")
        elif ending is Ending.STOPPED:
            self._tell_end("switched_off")
        self._halt(ending)

    def sink_lost(self, count: int, reason: Failure) -> None:
        """The sink lost ``count`` records it had taken, and takes no more
        (the reader of a pipe went away): they are not delivered, and the run
        fails with ``reason``."""
        self.stats.records -= count
        self.stats.lost += count
        self.ended(Ending.FAILED, reason)

    # -- the run

    def _over(self) -> bool:
        """The run must end: halted, switched off, the limit, or a refusal."""
        return self._halted or self.gate.over or self._gate_failure is not None

    async def _run_to_end(self, limit: int) -> _Response | None:
        self._gate_failure = None
        self._halted = False
        self._records_before_run = self.stats.records
        if self._queue_sink is not None:
            self._queue_sink.hold(limit)
        try:
            joining = self.gate.start(limit)
            self._run.join(joining)
            try:
                await joining
            except CancelledError:
                return None  # halted or switched off before the counter answered
            # Go on after the last record delivered (stored with it), not
            # after the last one read: a run that ended at its limit read on.
            stored = self.gate.position
            if stored is not None:
                self.framer.resume_from(stored)
            response = await self._stream_until_done()
            if self._gate_failure is not None:
                raise GaveUp("the sink refused records", self._gate_failure.value)
            return response
        finally:
            self.gate.finish()
            self._running = False
            self.stats.connected_since = None
            self._run.finish()
            over, self._run_over = self._run_over, []
            for waiting in over:
                waiting.callback(None)
            if isinstance(self.q, RecordQueue):
                self.q.wake_readers()

    async def _stream_until_done(self) -> _Response | None:
        last_response: _Response | None = None
        while not self._over():
            error: BaseException | None = None
            cause: str | None = None  # counted under a name of its own
            retry_after: str | None = None
            status: int | None = None
            try:
                response, outcome = await self._connect_once()
            except HTTPStatusError as failed:
                if self._over():
                    return last_response
                if not self.reconnect:
                    raise
                error, retry_after = failed, failed.retry_after
                status = failed.code
                kind = classify(status=status)
            except Exception as failed:
                if self._over():
                    return last_response  # the off switch cancelled the request
                kind = classify(error=failed)
                error = ConnectFailed(self.safe_url, failed)
                if not self.reconnect:
                    raise error from failed
            else:
                if response is not None and outcome.ending in _UNDECIDED:
                    await self._settle_offered()
                if response is None or self._over():
                    return response or last_response
                last_response = response
                ending = outcome.ending
                if ending is Ending.LIMIT or ending is Ending.STOPPED:
                    return response
                if ending is Ending.ENDED:
                    if not self.reconnect:
                        return response
                    kind = FailureKind.ENDED
                elif (restart := _restart(outcome)) is not None:
                    # The feed threw our position away (410 Gone, a
                    # compaction): go on from where it says, as a broken
                    # connection does (so a server that always says so
                    # backs off), telling why.
                    log.info(
                        "tidehunter: {url}: {reason}",
                        tidehunter_event="resume_restart",
                        url=public_url(self.url),
                        reason=self.secrets.mask(str(restart)),
                    )
                    error = restart
                    kind = FailureKind.NETWORK
                    cause = "resume"
                elif (starved := _starved(outcome)) is not None:
                    # Not the stream's failure: ask again, without gzip, now.
                    self._gzip_starved = True
                    # A reconnect of its own: one reconnect_scheduled event
                    # for each reconnect counted.
                    log.info(
                        "tidehunter: {url}: {reason}; asking again without"
                        " compression (--compression identity says so at once)",
                        tidehunter_event="reconnect_scheduled",
                        url=public_url(self.url),
                        reason=self.secrets.mask(one_line(starved)),
                        cause="compression",
                        attempt=1,
                        delay=0.0,
                        status=None,
                    )
                    await self._wait_to_reconnect("compression", 0.0)
                    continue
                else:
                    failure = StreamFailed(
                        self.safe_url, self.delivered, outcome.reason
                    )
                    if ending is Ending.STALLED:
                        self.stats.stalls += 1
                        log.info(
                            "tidehunter: {url}: stalled, no byte for {timeout:g} s",
                            tidehunter_event="stalled",
                            url=public_url(self.url),
                            timeout=self.stall_timeout,
                            delivered=self.delivered,
                        )
                    if not self.reconnect:
                        raise failure
                    error = failure
                    kind = FailureKind.NETWORK
            decision = self.backoff.next_delay(
                kind,
                retry_after=retry_after,
                sse_retry_ms=self.framer.retry_ms,
                status=status,
                cause=None if error is None or status else one_line(error),
                lived=self._stream_lived,
            )
            reason = decision.reason
            if isinstance(error, HTTPStatusError) and error.excerpt:
                # The server's own words: etcd says why a watch is refused.
                reason = f"{reason}; the server said: {error.excerpt}"
            self.stats.last_error = self.secrets.mask(reason)
            # The reason's parts as fields too; the delay only when there is one.
            scheduled = {"delay": float(decision.delay)} if decision.retry else {}
            log.info(
                "tidehunter: {url}: {reason}",
                tidehunter_event="reconnect_scheduled" if decision.retry else "gave_up",
                url=public_url(self.url),
                reason=self.stats.last_error,
                cause=cause or kind.value,
                attempt=decision.attempt,
                status=status,
                **scheduled,
            )
            if not decision.retry:
                raise GaveUp(decision.reason, error)
            await self._wait_to_reconnect(cause or kind, decision.delay)
        return last_response

    async def _settle_offered(self) -> None:
        """Let every record read have its fate before deciding what comes next.

        A Redis gate answers late: the records of a stream that just ended
        may still reach the limit, and then the run is over, not reconnected.
        """
        settling = self.gate.settled()
        if settling.called:
            return
        self._run.back_off(BackoffWait(settling, 0.0, self._reactor.seconds()))
        with contextlib.suppress(CancelledError):  # the off switch
            await settling

    def _choose_encoding(self) -> None:
        """Ask for what this hunter settled on; the user's own header wins."""
        own = [
            value
            for name, value in (self.headers or {}).items()
            if _text(name).lower() == "accept-encoding"
        ]
        starve_after = None
        if own:
            value = own[0]
            first = value if isinstance(value, (str, bytes)) else value[0]
            encoding = first.encode("latin-1") if isinstance(first, str) else first
        elif self.compression == "identity" or self._gzip_starved:
            encoding = b"identity"
        else:
            encoding = b"gzip"
            if self.compression == "auto":
                starve_after = STARVED_GZIP_SECONDS
        self._inflating.accept_encoding = encoding
        self._inflating.starve_after = starve_after

    async def _connect_once(self) -> tuple[_Response | None, StreamOutcome]:
        """One request (and its redirects) and, for a 2xx answer, its whole body."""
        self._choose_encoding()
        self._stream_lived = None
        response = await self._follow_redirects()
        if response is None:
            return None, StreamOutcome(Ending.STOPPED)
        if response.code == 204 and self._event_stream is not None:
            # The event-stream way of saying "do not reconnect".
            return response, StreamOutcome(Ending.STOPPED)
        if not 200 <= response.code < 300:
            body = await self._read_error_body(response)
            retry_after = response.headers.getRawHeaders("retry-after")
            raise HTTPStatusError(
                self.method,
                self.safe_url,
                response.code,
                response.phrase.decode("latin-1", "replace"),
                body,
                retry_after[0] if retry_after else None,
                self.secrets,
            )
        protocol = StreamProtocol(
            self._records_framer,
            self.gate,
            self.stats,
            self._reactor,
            stall_timeout=self.stall_timeout,
            owns_run=False,
        )
        opened = self.stats.connected_since = self._reactor.seconds()
        log.info(
            "tidehunter: connected to {url} (HTTP {code})",
            tidehunter_event="connected",
            url=public_url(self.url),
            code=response.code,
            reconnects=self.stats.reconnects,
        )
        response.deliverBody(protocol)
        # Streaming (paused, if a pause was asked for); closed at once if the
        # run was switched off while the headers were on their way.
        self._run.stream(protocol)
        try:
            outcome: StreamOutcome = await protocol.done
        finally:
            self.stats.connected_since = None
            self._stream_lived = self._reactor.seconds() - opened
        return response, outcome

    async def _follow_redirects(self) -> _Response | None:
        """The answer at the end of the redirects; None if the run was halted.

        Each redirect is logged.  The user's headers and credentials go only
        to the stream's own origin (scheme, host, port) unless
        ``redirect_keep_headers``: a redirect elsewhere gets the request
        without them.
        """
        url, method, data = self._request_url, self.method, self.data
        if self.resuming is not None:
            # Go on from the last record delivered.
            url, data = self.resuming.request(url, data)
        home = _origin(url)
        for hop in range(self.max_redirects + 1):
            trusted = self.redirect_keep_headers or _origin(url) == home
            response = await self._request(url, method, data, trusted)
            if response is None:
                return None
            location = response.headers.getRawHeaders("location")
            if response.code not in _REDIRECTS or not location:
                return response
            await self._read_error_body(response)  # closes it
            if self._over():
                return None
            target = redact_url(urljoin(url, location[0]))
            if hop == self.max_redirects:
                raise TooManyRedirects(
                    f"more than {self.max_redirects} redirects"
                    f" (the last to {loggable_url(target)})"
                )
            cross_origin = _origin(target) != home
            headers_sent = self.redirect_keep_headers or not cross_origin
            log.info(
                "tidehunter: HTTP {code} redirect from {source} to {target}{note}",
                tidehunter_event="redirected",
                code=response.code,
                source=loggable_url(url),
                target=loggable_url(target),
                cross_origin=cross_origin,
                headers_sent=headers_sent,
                note=""
                if headers_sent
                else " (another origin: sent without your headers and credentials)",
            )
            if response.code == 303 or (
                response.code in (301, 302) and method == "POST"
            ):
                method, data = "GET", None  # as browsers and requests do
            url = target
        raise AssertionError("unreachable")

    async def _request(
        self, url: str, method: str, data: bytes | None, trusted: bool
    ) -> _Response | None:
        """One request; None if the off switch cancelled it."""
        request = self._client.request(
            method,
            url,
            headers=cast(Any, self._request_headers(url, method, data, trusted)),
            data=data,
            auth=self.auth if trusted else None,
            allow_redirects=False,
            unbuffered=True,
            reactor=cast(Any, self._reactor),  # treq wants time and TCP
            timeout=self.timeout,
        )
        self._run.connect(request)
        try:
            return await request
        except Exception as failed:
            # Cancelling shows up wrapped (ResponseNeverReceived([CancelledError])):
            # what matters is whether the off switch did it or the timeout.
            if self._over():
                return None
            if self.timeout and _cancelled(failed):
                raise NoResponseHeaders(
                    f"no response headers within {self.timeout:g} s"
                ) from failed
            raise

    async def _read_error_body(self, response: _Response) -> bytes:
        """A bounded excerpt of an error body, never waiting on it forever.

        An error body can hang like any stream: the off switch and the stall
        (or header) timeout cut it short.
        """
        excerpt = _Excerpt(ERROR_EXCERPT_BYTES)
        patience = self.stall_timeout or self.timeout
        timer = None
        if patience:
            timer = self._reactor.callLater(patience, excerpt.hang_up)
        response.deliverBody(excerpt)
        self._run.read_error(excerpt)
        try:
            return await excerpt.done
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    def _request_headers(
        self,
        url: str | None = None,
        method: str | None = None,
        data: bytes | None = None,
        trusted: bool = True,
    ) -> dict[Any, Any]:
        """The user's headers (if ``trusted``), plus what an event stream
        needs to resume; signed for ``url``."""
        headers: dict[Any, Any] = dict(self.headers or {}) if trusted else {}
        if not any(_text(name).lower() == "user-agent" for name in headers):
            # Some feeds (Wikimedia) refuse clients that do not say who they are.
            headers["User-Agent"] = [USER_AGENT]
        if self._event_stream is not None:
            names = {_text(name).lower() for name in headers}
            if "accept" not in names:
                headers["Accept"] = ["text/event-stream"]
            last_id = self._event_stream.last_event_id
            if last_id is not None:
                # Once the stream has told us where we are, that beats any
                # Last-Event-ID the caller started from.
                for name in [n for n in headers if _text(n).lower() == "last-event-id"]:
                    del headers[name]
                if last_id:
                    headers["Last-Event-ID"] = [last_id]
        if self.signer is not None and trusted:
            # Signed per request: OAuth1 needs a fresh nonce each time.
            headers = self.signer(
                method or self.method,
                url or self._request_url,
                headers,
                data,
            )
        return headers

    async def _wait_to_reconnect(self, kind: FailureKind | str, delay: float) -> None:
        self.stats.reconnects += 1
        cause = kind.value if isinstance(kind, FailureKind) else kind
        self.stats.reconnects_by_cause[cause] = (
            self.stats.reconnects_by_cause.get(cause, 0) + 1
        )
        waiting: Deferred[None] = deferLater(self._reactor, delay, lambda: None)
        until = self._reactor.seconds() + delay
        self._run.back_off(BackoffWait(waiting, delay, until))
        with contextlib.suppress(CancelledError):  # the off switch
            await waiting


def _restart(outcome: StreamOutcome) -> ResumeRestart | None:
    """The feed's own word that the stream must start again elsewhere."""
    failed = outcome.reason if outcome.ending is Ending.FAILED else None
    value = None if failed is None else failed.value
    return value if isinstance(value, ResumeRestart) else None


def _starved(outcome: StreamOutcome) -> CompressionStarved | None:
    """The buffering compressor that ended this connection, if one did."""
    failed = outcome.reason if outcome.ending is Ending.FAILED else None
    value = None if failed is None else failed.value
    return value if isinstance(value, CompressionStarved) else None


#: The log lines of the run's ends and pauses, by ``tidehunter_event``.
_EVENT_TEXTS = {
    "limit_reached": "tidehunter: limit reached (count {count} of {limit})",
    "switched_off": "tidehunter: switched off (count {count})",
    "stop_requested": "tidehunter: stop requested (count {count})",
    "paused": "tidehunter: paused on request ({delivered} delivered)",
    "resumed": "tidehunter: resumed on request ({delivered} delivered)",
}

#: Statuses that send the request elsewhere, when they carry a Location.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: where credentials may go."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


#: Connection endings after which the run may go on.
_UNDECIDED = (Ending.ENDED, Ending.FAILED, Ending.STALLED)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
