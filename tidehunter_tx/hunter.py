"""``Hunter``: one HTTP stream into one sink, with an exact limit and an off switch.

This is the seed library's ``Hunter`` made asynchronous: ``tide_on(limit)``
returns a Deferred that fires with the response once the run is over (the
limit was reached, the counter was switched off, or the server ended the
stream), and ``tide_off()`` ends the run at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredQueue,
    ensureDeferred,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgent

from .auth import Signer
from .counter import Counter, StateCounter
from .framing import DEFAULT_MAX_RECORD_BYTES, Framer, SSEFramer, make_framer
from .policy import Backoff, FailureKind, classify
from .protocol import PAUSE_USER, Ending, StreamOutcome, StreamProtocol, StreamStats
from .sinks import (
    DEFAULT_HIGH_WATERMARK,
    QueueSink,
    RecordQueue,
    Sink,
)

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

log = Logger()

USER_AGENT = "tidehunter-tx/0.1.0 (+https://pypi.org/project/tidehunter-tx/)"


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
    ):
        self.method = method
        self.url = url
        self.code = code
        self.phrase = phrase
        self.body = body
        self.retry_after = retry_after
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


class GaveUp(Exception):
    """The reconnect policy gave up (a fatal status, or too many tries)."""

    def __init__(self, reason: str, error: BaseException | None):
        self.reason = reason
        self.error = error
        super().__init__(reason if error is None else f"{reason}: {error}")


def public_url(url: str) -> str:
    """Scheme, host and path only: safe for status replies and metrics.

    Query strings of real feeds carry API keys as often as not.
    """
    parts = urlsplit(redact_url(url))
    return urlunsplit(parts._replace(query="", fragment=""))


def redact_url(url: str) -> str:
    """Drop the user:password part of a URL (it becomes basic auth)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def loggable_url(url: str) -> str:
    """The URL for log lines and errors: no credentials, no query values.

    Feeds take API keys in the query (``?api_key=...``, ``?code=...``) under
    any name; the names stay, so a log still says which parameters were sent.
    """
    parts = urlsplit(redact_url(url))
    if not parts.query:
        return urlunsplit(parts)
    pairs = []
    for pair in parts.query.split("&"):
        name, sep, _ = pair.partition("=")
        pairs.append(f"{name}=***" if sep else pair)
    return urlunsplit(parts._replace(query="&".join(pairs)))


def _describe(reason: Failure) -> str:
    """One line for a failure (see :func:`_one_line`)."""
    return "unknown error" if reason.value is None else _one_line(reason.value)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _one_line(error: BaseException) -> str:
    """One readable line, looking inside Twisted's list-of-failures wrappers."""
    inner = getattr(error, "reasons", None)
    if inner:
        return (
            "; ".join(_describe(f) for f in inner if isinstance(f, Failure))
            or type(error).__name__
        )
    module = type(error).__module__
    if module.startswith(("OpenSSL", "service_identity")):
        detail = _tls_detail(error)
        return f"TLS: {detail}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _tls_detail(error: BaseException) -> str:
    """'certificate verify failed' rather than a tuple of OpenSSL internals."""
    args = error.args[0] if error.args else None
    if isinstance(args, list) and args and isinstance(args[0], tuple):
        return "; ".join(str(part[-1]) for part in args if part)
    text = " ".join(str(error).split())
    if "Mismatch" in text:
        return f"certificate does not match the host ({text})"
    return text or type(error).__name__


class ConnectFailed(Exception):
    """No response: refused, DNS, TLS verification, header timeout, ..."""

    def __init__(self, url: str, error: BaseException):
        self.url = url
        self.error = error
        super().__init__(f"{url}: {_one_line(error)}")


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
    :param framing: how records are cut: ``"lines"``, ``"sse"``, ``"length"``.
    :param max_record_bytes: larger records are skipped and counted.
    :param high_watermark: pause reading from the socket when this many
        records wait in the queue; resume at ``low_watermark`` (default: a
        quarter of the high watermark).
    :param sink: deliver somewhere other than ``q`` (file, Redis, ...).
    :param timeout: seconds to wait for the response headers.
    :param reconnect: when the stream ends or breaks, connect again as the
        backoff policy says, until the limit is reached or the counter is
        switched off.  Off by default, as in the original library.
    :param backoff: the reconnect policy (default: the hbc policy).
    :param signer: adds credentials to each request's headers (see
        :func:`tidehunter_tx.auth.signer_from_env`).
    :param stall_timeout: seconds without a byte (keep-alives count) after
        which the connection is judged dead; ``None`` never judges.
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
        reconnect: bool = False,
        backoff: Backoff | None = None,
        stall_timeout: float | None = None,
        agent: IAgent | None = None,
        ca_file: str | None = None,
        signer: Signer | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        parts = urlsplit(url)
        if parts.username is not None and auth is None:
            # user:password@host means basic auth (as in requests); the
            # credentials never travel in the request line.
            auth = (unquote(parts.username), unquote(parts.password or ""))
        self.url = url
        self._request_url = redact_url(url)
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
        if getattr(self.sc, "make_gate", None) and not getattr(
            self.sink, "admits", False
        ):
            # A shared counter admits in Redis: deliver through its gate.
            self.sink = self.sc.make_gate(local=self.sink)  # type: ignore[attr-defined]
        if getattr(self.sink, "admits", False):
            if isinstance(self.framer, SSEFramer):
                framer = self.framer
                self.sink.set_event_id_source(lambda: framer.last_event_id)  # type: ignore[attr-defined]
            self.sink.set_verdict_callback(self._verdict)  # type: ignore[attr-defined]
            self.sink.set_admitted_callback(self._admitted)  # type: ignore[attr-defined]
        self.stats = StreamStats()
        self.timeout = timeout
        self.reconnect = reconnect
        self.backoff = Backoff() if backoff is None else backoff
        self.stall_timeout = stall_timeout
        self.signer = signer
        self._reactor = reactor
        if agent is None:
            pool = _QuietPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
            if ca_file is not None:
                policy = BrowserLikePolicyForHTTPS(trustRoot=load_ca_file(ca_file))
                agent = Agent(reactor, contextFactory=policy, pool=pool)
            else:
                agent = Agent(reactor, pool=pool)
        self._client = HTTPClient(agent)
        self._request: Deferred[_Response] | None = None
        self._protocol: StreamProtocol | None = None
        self._waiting: Deferred[None] | None = None
        self._excerpt: _Excerpt | None = None
        self._starting: Deferred[Any] | None = None
        self._sink_failure: Failure | None = None
        self._running = False
        self._halted = False
        self._user_paused = False
        self._records_before_run = 0
        self._state = "idle"
        self._current_delay = 0.0

    @property
    def safe_url(self) -> str:
        """The URL without credentials, for logs and error messages."""
        return loggable_url(self.url)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def delivered(self) -> int:
        """Records this hunter delivered in its current (or last) run."""
        return self.stats.records - self._records_before_run

    @property
    def state(self) -> str:
        """idle, connecting, streaming, paused, reconnecting or stopped."""
        if self._state == "streaming" and self._user_paused:
            return "paused"
        return self._state

    def tide_on(self, limit: int = 0) -> Deferred[_Response | None]:
        """Start a run; fire with the last response when it is over.

        Fires with ``None`` when the run was switched off before any server
        answered.  Without ``reconnect``, fails with :class:`HTTPStatusError`
        for a non-2xx answer and :class:`StreamFailed` when the connection
        breaks; with it, fails with :class:`GaveUp` when the policy gives up.
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

    def halt(self) -> None:
        """End this hunter's run now, leaving a shared counter on.

        ``tide_off()`` is the off switch of every hunter sharing the counter;
        ``halt()`` stops just this one (a daemon's SIGTERM or AMP Stop).
        """
        self._halted = True
        self._stop_now()

    def pause(self) -> None:
        """Stop reading from the socket, keeping the connection and the counts.

        The pause holds across reconnects until :meth:`resume`, and a paused
        stream is never judged stalled.
        """
        self._user_paused = True
        if self._protocol is not None:
            self._protocol.pause(PAUSE_USER)

    def resume(self) -> None:
        self._user_paused = False
        if self._protocol is not None:
            self._protocol.resume(PAUSE_USER)

    def set_limit(self, limit: int) -> None:
        """Change the limit of the run that is on; at or below the count, stop."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.sc.limit = limit
        if self._running and self.sc.limit_reached:
            self._stop_now(Ending.LIMIT)

    def status(self) -> dict[str, Any]:
        """Counters for people and programs; never a credential."""
        stats = self.stats
        return {
            "state": self.state,
            "url": public_url(self.url),
            "count": self.sc.count,
            "total": self.sc.total,
            "limit": self.sc.limit,
            "bytes": stats.bytes,
            "records": stats.records,
            "keepalives": self.framer.keepalives,
            "skipped": self.framer.skipped,
            "truncated": stats.truncated,
            "pauses": stats.pauses,
            "reconnects": stats.reconnects,
            "reconnects_by_cause": dict(stats.reconnects_by_cause),
            "stalls": stats.stalls,
            "backoff": self._current_delay,
            "connected_since": stats.connected_since,
            "last_record_at": stats.last_record_at,
            "last_error": stats.last_error,
            "dropped": int(getattr(self.sink, "dropped", 0)),
        }

    async def _run(self, limit: int) -> _Response | None:
        self._halted = False
        self._records_before_run = self.stats.records
        self.sc.add_stop_listener(self._stop_now)
        try:
            if self._shared:
                # Join the run; a limit of 0 leaves the shared limit alone.
                start: Any = self.sc.start
                starting: Deferred[Any] = start(limit or None)
                self._starting = starting
                try:
                    await starting
                except CancelledError:
                    return None  # halted or switched off before Redis answered
                finally:
                    self._starting = None
                stored = getattr(self.sc, "last_event_id", None)
                framer = self.framer
                fresh = isinstance(framer, SSEFramer) and framer.last_event_id is None
                if fresh and stored:
                    framer.resume_from(stored)  # type: ignore[attr-defined]
            else:
                self.sc.limit = limit
                self.sc.start()
            return await self._stream_until_done()
        finally:
            self.sc.remove_stop_listener(self._stop_now)
            # A shared counter stays as the run left it (count == limit), for
            # the other hunters and the consumers; only tide_off() stops it.
            if self.sc.started and not self._shared:
                self.sc.stop()
            self._running = False
            self._state = "stopped"
            self.stats.connected_since = None

    async def _stream_until_done(self) -> _Response | None:
        last_response: _Response | None = None
        while not self._over():
            error: BaseException | None = None
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
                else:
                    if self._sink_failure is not None:
                        sink_failure, self._sink_failure = self._sink_failure, None
                        raise GaveUp("the sink refused records", sink_failure.value)
                    failure = StreamFailed(
                        self.safe_url, self.delivered, outcome.reason
                    )
                    if ending is Ending.STALLED:
                        self.stats.stalls += 1
                    if not self.reconnect:
                        raise failure
                    error = failure
                    kind = FailureKind.NETWORK
            decision = self.backoff.next_delay(
                kind,
                retry_after=retry_after,
                sse_retry_ms=getattr(self.framer, "retry_ms", None),
                status=status,
                cause=None if error is None or status else _one_line(error),
            )
            self.stats.last_error = decision.reason
            log.info(
                "tidehunter: {url}: {reason}",
                url=public_url(self.url),
                reason=decision.reason,
            )
            if not decision.retry:
                raise GaveUp(decision.reason, error)
            await self._wait_to_reconnect(kind, decision.delay)
        return last_response

    async def _connect_once(self) -> tuple[_Response | None, StreamOutcome]:
        """One request and, for a 2xx answer, its whole body."""
        self._state = "connecting"
        request = self._client.request(
            self.method,
            self._request_url,
            headers=cast(Any, self._request_headers()),
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
            if not self._over():
                raise
            return None, StreamOutcome(Ending.STOPPED)
        finally:
            self._request = None
        if response.code == 204 and isinstance(self.framer, SSEFramer):
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
            )
        protocol = StreamProtocol(
            self.framer,
            self.sc,
            self.sink,
            self.stats,
            self._reactor,
            stall_timeout=self.stall_timeout,
        )
        self._protocol = protocol
        self._state = "streaming"
        self.stats.connected_since = self._reactor.seconds()
        if self._over():
            protocol.stop()  # switched off while the headers were on their way
        response.deliverBody(protocol)
        if self._user_paused:
            protocol.pause(PAUSE_USER)
        try:
            outcome: StreamOutcome = await protocol.done
        finally:
            self._protocol = None
            self.stats.connected_since = None
        if protocol.records:
            self.backoff.record_arrived()
        return response, outcome

    async def _read_error_body(self, response: _Response) -> bytes:
        """A bounded excerpt of an error body, never waiting on it forever.

        An error body can hang like any stream: the off switch and the stall
        (or header) timeout cut it short.
        """
        excerpt = _Excerpt(ERROR_EXCERPT_BYTES)
        self._excerpt = excerpt
        patience = self.stall_timeout or self.timeout
        timer = None
        if patience:
            timer = self._reactor.callLater(patience, excerpt.hang_up)
        response.deliverBody(excerpt)
        try:
            return await excerpt.done
        finally:
            self._excerpt = None
            if timer is not None and timer.active():
                timer.cancel()

    def _request_headers(self) -> dict[Any, Any]:
        """The user's headers, plus what an event stream needs to resume."""
        headers: dict[Any, Any] = dict(self.headers or {})
        if not any(_text(name).lower() == "user-agent" for name in headers):
            # Some feeds (Wikimedia) refuse clients that do not say who they are.
            headers["User-Agent"] = [USER_AGENT]
        if isinstance(self.framer, SSEFramer):
            names = {_text(name).lower() for name in headers}
            if "accept" not in names:
                headers["Accept"] = ["text/event-stream"]
            last_id = self.framer.last_event_id
            if last_id is not None:
                # Once the stream has told us where we are, that beats any
                # Last-Event-ID the caller started from.
                for name in [n for n in headers if _text(n).lower() == "last-event-id"]:
                    del headers[name]
                if last_id:
                    headers["Last-Event-ID"] = [last_id]
        if self.signer is not None:
            # Signed per request: OAuth1 needs a fresh nonce each time.
            headers = self.signer(self.method, self._request_url, headers, self.data)
        return headers

    async def _wait_to_reconnect(self, kind: FailureKind, delay: float) -> None:
        self.stats.reconnects += 1
        cause = kind.value
        self.stats.reconnects_by_cause[cause] = (
            self.stats.reconnects_by_cause.get(cause, 0) + 1
        )
        self._state = "reconnecting"
        self._current_delay = delay
        waiting: Deferred[None] = deferLater(self._reactor, delay, lambda: None)
        self._waiting = waiting
        try:
            await waiting
        except CancelledError:
            pass  # the off switch
        finally:
            self._waiting = None
            self._current_delay = 0.0

    @property
    def _shared(self) -> bool:
        return bool(getattr(self.sc, "shared", False))

    def _over(self) -> bool:
        """The run must end: switched off, halted, or the limit is reached."""
        return self._halted or not self.sc.started or self.sc.limit_reached

    def _verdict(self, ending: Ending, reason: Failure | None) -> None:
        """Redis said the run is over (or refused a batch: no retry cures that)."""
        if ending is Ending.FAILED:
            self._sink_failure = reason
        if self._protocol is not None:
            self._protocol.stop(ending, reason)
        elif ending is not Ending.FAILED:
            self._stop_now(ending)

    def _admitted(self, records: int) -> None:
        self.stats.records += records
        self.stats.last_record_at = self._reactor.seconds()
        self.backoff.record_arrived()

    def _stop_now(self, ending: Ending = Ending.STOPPED) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._excerpt is not None:
            self._excerpt.hang_up()
        if self._protocol is not None:
            self._protocol.stop(ending)
        elif self._request is not None:
            self._request.cancel()
        elif self._waiting is not None:
            self._waiting.cancel()
