"""The HTTP client under a hunter: Twisted's, with bounds a hostile server cannot pass.

Twisted's client keeps every response header line it is sent, however many:
a server that sends headers without end grows the process without bound.
Here the bytes and the lines of a response's headers are counted as they
arrive, and past the limit the connection is closed with
:class:`ResponseHeadersTooLarge`, which the reconnect policy backs off from
like an HTTP error.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from .policy import ServerMisbehaved

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "READ_BYTES",
    "BoundedPool",
    "ResponseHeadersTooLarge",
]

#: Response header bytes (status line included) and header lines per response.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100

#: Bytes per socket read on a feed connection.  Twisted reads 64 KiB at a
#: time; a stream of small records pays per read (framing, admission, waking
#: the consumer), and 256 KiB measured fastest (``make bench``).
READ_BYTES = 256 * 1024


class ResponseHeadersTooLarge(ServerMisbehaved):
    """A response's headers passed the bound: the server is not a feed."""


class _BoundedClientProtocol(HTTP11ClientProtocol):
    """Counts each response's header bytes and lines; closes past the bound."""

    def __init__(
        self, quiescentCallback: Any, max_header_bytes: int, max_headers: int
    ) -> None:
        super().__init__(quiescentCallback)  # type: ignore[no-untyped-call]
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._counted: object = None
        self._header_bytes = 0
        self._header_lines = 0

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        # Counted once the parser took the bytes and is still in the headers:
        # the chunk that ends them (and starts the body) is never counted.
        if parser is None or parser is not self._parser:
            return
        if parser.state not in (STATUS, HEADER):
            return
        if parser is not self._counted:
            self._counted, self._header_bytes, self._header_lines = parser, 0, 0
        self._header_bytes += len(data)
        self._header_lines += data.count(b"\n")
        if self._header_bytes > self._max_header_bytes:
            problem = f"response headers exceeded {self._max_header_bytes} bytes"
        elif self._header_lines > self._max_headers + 1:  # + the status line
            problem = f"response headers exceeded {self._max_headers} headers"
        else:
            return
        self._giveUp(Failure(ResponseHeadersTooLarge(problem)))  # type: ignore[no-untyped-call]


class _BoundedClientFactory(_HTTP11ClientFactory):
    """Builds bounded protocols; a stream's start and stop are no news."""

    noisy = False

    def __init__(
        self,
        quiescentCallback: Any,
        metadata: Any,
        *,
        max_header_bytes: int,
        max_headers: int,
    ) -> None:
        super().__init__(quiescentCallback, metadata)  # type: ignore[no-untyped-call]
        self._limits = (max_header_bytes, max_headers)

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _BoundedClientProtocol(self._quiescentCallback, *self._limits)


class BoundedPool(HTTPConnectionPool):
    """A hunter's own pool: bounded headers, quiet factories, wide reads."""

    def __init__(
        self,
        reactor: Any,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        super().__init__(reactor, persistent=False)  # type: ignore[no-untyped-call]
        self._factory = partial(  # type: ignore[assignment]
            _BoundedClientFactory,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
        )

    def _newConnection(self, key: Any, endpoint: Any) -> Deferred[HTTP11ClientProtocol]:
        connecting = super()._newConnection(key, endpoint)
        return connecting.addCallback(_widen_reads)


def _widen_reads(protocol: HTTP11ClientProtocol) -> HTTP11ClientProtocol:
    """Raise the read size of the socket under ``protocol`` (through TLS)."""
    transport = protocol.transport
    for _ in range(4):  # a TLS wrapper or two, at most, sits on the socket
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = READ_BYTES
            break
        transport = getattr(transport, "transport", None)
    return protocol
