"""``Hunter``: one HTTP stream into one sink, with an exact limit and an off switch.

This is the seed library's ``Hunter`` made asynchronous: ``tide_on(limit)``
returns a Deferred that fires with the response once the run is over (the
limit was reached, the counter was switched off, or the server ended the
stream), and ``tide_off()`` ends the run at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet.defer import Deferred, DeferredQueue, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from .counter import Counter, StateCounter
from .framing import DEFAULT_MAX_RECORD_BYTES, Framer, make_framer
from .protocol import Ending, StreamOutcome, StreamProtocol, StreamStats
from .sinks import (
    DEFAULT_HIGH_WATERMARK,
    QueueSink,
    RecordQueue,
    Sink,
)

__all__ = [
    "AlreadyRunning",
    "HTTPStatusError",
    "Hunter",
    "StreamFailed",
    "redact_url",
]

HeadersLike = Mapping[str | bytes, str | bytes | Sequence[str | bytes]]

#: How much of an error response's body is kept for the error message.
ERROR_EXCERPT_BYTES = 1024


class HTTPStatusError(Exception):
    """The server answered with a status other than 2xx; nothing was queued."""

    def __init__(self, method: str, url: str, code: int, phrase: str, body: bytes):
        self.method = method
        self.url = url
        self.code = code
        self.phrase = phrase
        self.body = body
        # One line: an error body is often several JSON lines.
        excerpt = " ".join(body[:200].decode("utf-8", "replace").split())
        message = f"{method} {url} answered HTTP {code} {phrase}".rstrip()
        super().__init__(f"{message}: {excerpt}" if excerpt else message)


class StreamFailed(Exception):
    """The connection broke mid-stream (reset, malformed chunking, ...)."""

    def __init__(self, url: str, records: int, reason: Failure | None):
        self.url = url
        self.records = records
        self.reason = reason
        cause = "unknown cause" if reason is None else _describe(reason)
        super().__init__(f"stream {url} broke after {records} records: {cause}")


class AlreadyRunning(Exception):
    """``tide_on`` was called while a run of the same hunter was still on."""


def redact_url(url: str) -> str:
    """Drop credentials from a URL so it can be logged or reported."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(reason: Failure) -> str:
    """One line for a failure, looking inside Twisted's wrapper exceptions."""
    value = reason.value
    inner = getattr(value, "reasons", None)
    if inner:
        return "; ".join(_describe(f) for f in inner if isinstance(f, Failure))
    return f"{type(value).__name__}: {value}" if str(value) else type(value).__name__


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
        if len(self.data) >= self.limit and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))


class _QuietClientFactory(_HTTP11ClientFactory):
    """A stream is one long connection: its factory's start/stop is no news."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


class Hunter:
    """Streams ``url`` into ``q`` (a ``DeferredQueue`` of ``bytes`` records).

    :param url: the stream.
    :param q: the queue records go into; a :class:`RecordQueue` (an O(1)
        ``DeferredQueue``) by default.  A queue you pass is used as it is, even
        when empty.
    :param sc: the state counter (``count``, ``total``, ``started``,
        ``stopped``, ``start()``, ``stop()``); a consumer's ``sc.stop()``
        ends the run at once.
    :param framing: how records are cut: ``"lines"``.
    :param max_record_bytes: larger records are skipped and counted.
    :param high_watermark: pause reading from the socket when this many
        records wait in the queue; resume at ``low_watermark`` (default: a
        quarter of the high watermark).
    :param sink: deliver somewhere other than ``q`` (file, Redis, ...).
    :param timeout: seconds to wait for the response headers.
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
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        low_watermark: int | None = None,
        sink: Sink | None = None,
        timeout: float | None = 30.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self.q: DeferredQueue[bytes] = RecordQueue() if q is None else q
        self.sc: Counter = StateCounter() if sc is None else sc
        self.method = method.upper()
        self.headers = headers
        self.data = data
        self.auth = auth
        self.framer: Framer = make_framer(framing, max_record_bytes)
        self.sink: Sink = (
            sink
            if sink is not None
            else QueueSink(self.q, high_watermark, low_watermark, reactor)
        )
        self.stats = StreamStats()
        self.timeout = timeout
        self._reactor = reactor
        self._client = HTTPClient(
            Agent(reactor, pool=_QuietPool(reactor, persistent=False)),  # type: ignore[no-untyped-call]
        )
        self._request: Deferred[_Response] | None = None
        self._protocol: StreamProtocol | None = None
        self._running = False
        self._records_before_run = 0

    @property
    def safe_url(self) -> str:
        """The URL without credentials, for logs and status replies."""
        return redact_url(self.url)

    @property
    def running(self) -> bool:
        return self._running

    def tide_on(self, limit: int = 0) -> Deferred[_Response | None]:
        """Start a run; fire with the response when it is over.

        Fires with ``None`` when the run was switched off before the server
        answered.  Fails with :class:`HTTPStatusError` for a non-2xx answer
        and :class:`StreamFailed` when the connection breaks.
        """
        if self._running:
            raise AlreadyRunning(f"a run of {self.safe_url} is already on")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self._running = True
        return ensureDeferred(self._run(limit))

    def tide_off(self) -> None:
        """End the run now: switch the counter off and close the connection."""
        self.sc.stop()
        self._stop_now()

    def pause(self, reason: str = "user") -> None:
        """Stop reading from the socket, keeping the connection and the counts."""
        if self._protocol is not None:
            self._protocol.pause(reason)

    def resume(self, reason: str = "user") -> None:
        if self._protocol is not None:
            self._protocol.resume(reason)

    async def _run(self, limit: int) -> _Response | None:
        self.sc.limit = limit
        self.sc.start()
        self.sc.add_stop_listener(self._stop_now)
        self._records_before_run = self.stats.records
        try:
            return await self._stream_once()
        finally:
            self.sc.remove_stop_listener(self._stop_now)
            if self.sc.started:
                self.sc.stop()
            self._running = False

    async def _stream_once(self) -> _Response | None:
        request = self._client.request(
            self.method,
            self.url,
            headers=cast(Any, self.headers),
            data=self.data,
            auth=self.auth,
            unbuffered=True,
            reactor=self._reactor,
            timeout=self.timeout,
        )
        self._request = request
        try:
            response = await request
        except Exception:
            # Cancelling shows up wrapped (ResponseNeverReceived([CancelledError])):
            # what matters is whether the off switch did it or something else.
            if self.sc.started:
                raise
            return None
        finally:
            self._request = None
        if not 200 <= response.code < 300:
            excerpt = _Excerpt(ERROR_EXCERPT_BYTES)
            response.deliverBody(excerpt)
            body = await excerpt.done
            phrase = response.phrase.decode("latin-1", "replace")
            raise HTTPStatusError(
                self.method, self.safe_url, response.code, phrase, body
            )
        protocol = StreamProtocol(
            self.framer, self.sc, self.sink, self.stats, self._reactor
        )
        self._protocol = protocol
        if not self.sc.started:
            protocol.stop()  # switched off while the headers were on their way
        response.deliverBody(protocol)
        try:
            outcome: StreamOutcome = await protocol.done
        finally:
            self._protocol = None
        if outcome.ending is Ending.FAILED:
            delivered = self.stats.records - self._records_before_run
            raise StreamFailed(self.safe_url, delivered, outcome.reason)
        return response

    def _stop_now(self) -> None:
        if self._protocol is not None:
            self._protocol.stop()
        elif self._request is not None:
            self._request.cancel()
