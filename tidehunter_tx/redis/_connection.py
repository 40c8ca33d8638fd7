"""One reconnecting txredisapi connection, and pre-encoded commands sent on it."""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, succeed

from ._spec import RedisSpec, redis_password

__all__ = ["close_connection", "connect", "encode_command", "execute_encoded"]


def connect(spec: RedisSpec) -> Any:
    """A lazy, reconnecting connection: commands wait while Redis is away.

    Bytes stay bytes and numbers stay strings (``charset=None,
    convertNumbers=False``), as techies' consumers expect to read them.
    """
    connection = txredisapi.lazyConnection(
        host=spec.host,
        port=spec.port,
        dbid=spec.db,
        password=redis_password(spec),
        charset=None,
        convertNumbers=False,
        reconnect=True,
    )
    # Come back quickly after an outage: the stream waits paused meanwhile.
    connection._factory.maxDelay = 1
    return connection


def encode_command(name: bytes, *groups: list[bytes]) -> bytes:
    """One command as RESP bytes, built in bulk.

    Encoding thousands of arguments one call at a time (as a client library
    does) costs more than the push itself; records need no conversion.
    """
    count = 1 + sum(len(group) for group in groups)
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (count, len(name), name)]
    for group in groups:
        parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in group]
    return b"".join(parts)


def execute_encoded(connection: Any, payload: bytes) -> Deferred[Any]:
    """Send a pre-encoded command on txredisapi's connection, in order.

    Uses the same connection, the same reply queue and the same waiting for
    a reconnect as the library's own commands, so order and pipelining hold.
    """
    factory = connection._factory

    def send(protocol: Any) -> Deferred[Any]:
        if not protocol.connected:
            raise txredisapi.ConnectionError("Not connected")
        protocol.transport.write(payload)
        return protocol.replyQueue.get().addCallback(protocol.handle_reply)  # type: ignore[no-any-return]

    return factory.getConnection(peek=True).addCallback(send)  # type: ignore[no-any-return]


def close_connection(connection: Any) -> Deferred[Any]:
    """Disconnect, tolerating a connection that never came up."""
    try:
        return DeferredList([connection.disconnect()], consumeErrors=True)
    except Exception:
        return succeed(None)
