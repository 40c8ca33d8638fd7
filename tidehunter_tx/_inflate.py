"""gzip bodies inflated a step at a time, and never while the reader is paused.

Twisted's ``GzipDecoder`` (which treq puts in front of every request) hands
each compressed read to ``zlib`` whole: 256 KiB of a gzip bomb inflate to
hundreds of megabytes in one call, delivered before the sink can say it is
full.  :class:`InflatingAgent` decodes the body itself, at most
:data:`INFLATE_STEP` bytes of output at a time, and stops between steps while
the protocol it feeds has paused its transport; the compressed rest waits
(one socket read at most, since the socket is paused too) until it resumes.
A corrupt body ends the response with :class:`CorruptBody`.

Some compressors buffer (express's ``compression`` under pouchdb-server sends
a 10-byte gzip header and holds the rest): a stream that waits for them waits
forever.  Given ``starve_after``, a gzip body that has inflated to nothing
that long ends with :class:`CompressionStarved`, so the caller can ask again
without compression.  The ``Accept-Encoding`` the agent sends is its own
(treq adds ``gzip`` beside whatever the caller set).
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from .policy import ServerMisbehaved

__all__ = ["INFLATE_STEP", "CompressionStarved", "CorruptBody", "InflatingAgent"]

#: Inflated bytes handed on per step: what one step may add to the sink
#: before it can say it is full.
INFLATE_STEP = 64 * 1024

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_GZIP = (b"gzip", b"x-gzip")


class CorruptBody(ServerMisbehaved):
    """A compressed body that does not inflate: the server sent garbage."""


class CompressionStarved(Exception):
    """A gzip body gave no byte for a while: its compressor is buffering."""


@implementer(IAgent)
class InflatingAgent:
    """Wraps an agent; gzip response bodies are inflated step by step.

    treq's own decoder sits outside this one and then finds no
    ``Content-Encoding`` to act on.  ``accept_encoding`` (None: leave the
    header as it comes) and ``starve_after`` (seconds, None: never) are read
    at each request, so the caller can change its mind between requests.
    """

    def __init__(self, agent: IAgent, clock: IReactorTime) -> None:
        self._agent = agent
        self._clock = clock
        self.accept_encoding: bytes | None = b"gzip"
        self.starve_after: float | None = None

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        if self.accept_encoding is not None:
            headers = Headers() if headers is None else headers.copy()
            headers.setRawHeaders(b"accept-encoding", [self.accept_encoding])
        requested = self._agent.request(method, uri, headers, bodyProducer)
        return requested.addCallback(self._decode, self.starve_after)

    def _decode(self, response: IResponse, starve_after: float | None) -> IResponse:
        encodings = response.headers.getRawHeaders(b"content-encoding") or []
        codings = [
            coding.strip().lower()
            for value in encodings
            for coding in value.split(b",")
            if coding.strip()
        ]
        if codings != [] and codings[-1] in _GZIP:
            return _InflatedResponse(response, codings[:-1], self._clock, starve_after)
        return response


class _InflatedResponse(proxyForInterface(IResponse)):  # type: ignore[misc]
    """The response as it reads once inflated: no gzip coding, no length."""

    def __init__(
        self,
        original: IResponse,
        other_codings: list[bytes],
        clock: IReactorTime,
        starve_after: float | None,
    ) -> None:
        super().__init__(original)
        self._clock = clock
        self._starve_after = starve_after
        headers = original.headers.copy()
        if other_codings:
            headers.setRawHeaders(b"content-encoding", [b", ".join(other_codings)])
        else:
            headers.removeHeader(b"content-encoding")
        headers.removeHeader(b"content-length")
        self.headers = headers
        self.length = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        self.original.deliverBody(
            _InflatingProtocol(protocol, self._clock, self._starve_after)
        )


class _InflatingProtocol:
    """Between the response and its reader: inflates while the reader reads.

    The reader is handed a transport of ours, so its pause and resume reach
    this object first: a pause stops inflating at the next step, a resume
    inflates what is held (in a later reactor turn, never inside the caller
    that drained the sink) and only then lets the socket read again.
    """

    def __init__(
        self, reader: Any, clock: IReactorTime, starve_after: float | None = None
    ) -> None:
        self._reader = reader
        self._clock = clock
        self._starve_after = starve_after
        self._starving: Any = None
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._held = b""  # compressed, not inflated yet
        self._more_out = False  # the last step was full: zlib may hold output
        self._paused = False  # by the reader
        self._paused_socket = False  # by us, for the reader
        self._stopped = False
        self._inflating = False
        self._resume_call: Any = None
        self._failure: Failure | None = None
        self._lost: Failure | None = None
        self._ended = False
        self.transport: Any = None

    # -- the response side

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        if self._starve_after is not None:
            self._starving = self._clock.callLater(self._starve_after, self._starved)
        self._reader.makeConnection(_ReaderTransport(self))

    def _starved(self) -> None:
        self._starving = None
        self._fail(
            CompressionStarved(
                f"gzip body gave no byte in {self._starve_after:g} s"
                " (a compressor that buffers)"
            )
        )

    def _cancel_starving(self) -> None:
        if self._starving is not None:
            if self._starving.active():
                self._starving.cancel()
            self._starving = None

    def dataReceived(self, data: bytes) -> None:
        if self._stopped or self._failure is not None:
            return
        self._held = self._held + data if self._held else data
        self._inflate()

    def connectionLost(self, reason: Failure) -> None:
        self._lost = reason
        self._inflate()

    # -- the reader side (through _ReaderTransport)

    def pause(self) -> None:
        self._paused = True
        if not self._paused_socket:
            self._paused_socket = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._resume_call is None:
            self._resume_call = self._clock.callLater(0, self._resumed)

    def stop(self) -> None:
        self._stopped = True
        self._cancel_starving()
        self._held = b""
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        self.transport.stopProducing()

    def _resumed(self) -> None:
        self._resume_call = None
        self._inflate()

    # -- inflating

    def _inflate(self) -> None:
        if self._inflating:
            return  # a reader's pause or resume from inside dataReceived
        self._inflating = True
        try:
            while self._owed() and not self._halted():
                self._step()
        finally:
            self._inflating = False
        if self._lost is not None:
            if not self._owed() or self._stopped or self._failure is not None:
                self._end()
            # else the reader paused: the rest is inflated when it resumes.
        elif not self._halted() and self._paused_socket:
            self._paused_socket = False
            self.transport.resumeProducing()

    def _owed(self) -> bool:
        return bool(self._held) or self._more_out

    def _halted(self) -> bool:
        return self._paused or self._stopped or self._failure is not None

    def _step(self) -> None:
        try:
            out = self._inflater.decompress(self._held, INFLATE_STEP)
        except zlib.error as error:
            self._fail(CorruptBody(f"gzip body does not inflate: {error}"))
            return
        self._held = self._inflater.unconsumed_tail
        self._more_out = len(out) == INFLATE_STEP
        if self._inflater.eof and not self._more_out:
            # Concatenated gzip members (RFC 1952) are one body.
            rest = self._inflater.unused_data
            self._inflater = zlib.decompressobj(_GZIP_WBITS)
            self._held = rest + self._held
        if out:
            self._cancel_starving()
            self._reader.dataReceived(out)

    def _fail(self, error: Exception) -> None:
        self._cancel_starving()
        self._failure = Failure(error)
        self._held = b""
        self._more_out = False
        if self._lost is None:
            self.transport.stopProducing()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_starving()
        reason = self._failure or self._lost
        assert reason is not None
        self._reader.connectionLost(reason)


class _ReaderTransport:
    """The transport the reader sees: its pause/resume/stop go through us."""

    def __init__(self, inflating: _InflatingProtocol) -> None:
        self._inflating = inflating

    def pauseProducing(self) -> None:
        self._inflating.pause()

    def resumeProducing(self) -> None:
        self._inflating.resume()

    def stopProducing(self) -> None:
        self._inflating.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inflating.transport, name)
