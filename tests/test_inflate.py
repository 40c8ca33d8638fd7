"""The step-by-step gzip decoder on its own: pauses, ends, members, garbage."""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from tidehunter_tx._inflate import INFLATE_STEP, CorruptBody, _InflatingProtocol


def gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


class Socket:
    """The response's transport: records what the decoder asked of it."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class Reader:
    """A body reader that pauses after ``pause_after`` bytes."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.data = bytearray()
        self.steps = 0
        self.lost: Failure | None = None
        self.pause_after = pause_after
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        assert self.lost is None
        assert len(data) <= INFLATE_STEP
        self.data += data
        self.steps += 1
        if self.pause_after is not None and len(self.data) >= self.pause_after:
            self.pause_after = None
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


def connected(reader: Reader) -> tuple[_InflatingProtocol, Socket, Clock]:
    clock, socket = Clock(), Socket()
    inflating = _InflatingProtocol(reader, clock)
    inflating.makeConnection(socket)
    return inflating, socket, clock


def test_a_paused_reader_gets_nothing_more_until_it_resumes_and_the_end_waits() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    reader = Reader(pause_after=1)
    inflating, socket, clock = connected(reader)
    inflating.dataReceived(gzip(body))
    inflating.connectionLost(Failure(ResponseDone()))
    assert len(reader.data) == INFLATE_STEP and socket.paused
    assert reader.lost is None  # the rest is owed first
    reader.transport.resumeProducing()
    assert len(reader.data) == INFLATE_STEP  # not inside the resuming call
    clock.advance(0)
    assert bytes(reader.data) == body
    assert reader.lost is not None and reader.lost.check(ResponseDone)


def test_the_socket_reads_again_only_once_what_is_held_is_inflated() -> None:
    reader = Reader(pause_after=1)
    inflating, socket, clock = connected(reader)
    inflating.dataReceived(gzip(b"x" * (3 * INFLATE_STEP)))
    assert socket.paused
    reader.transport.resumeProducing()
    clock.advance(0)
    assert not socket.paused and len(reader.data) == 3 * INFLATE_STEP


def test_concatenated_members_are_one_body() -> None:
    reader = Reader()
    inflating, _, _ = connected(reader)
    both = gzip(b"one\n") + gzip(b"two\n")
    for i in range(len(both)):  # a byte at a time, across the seam
        inflating.dataReceived(both[i : i + 1])
    assert bytes(reader.data) == b"one\ntwo\n"


def test_garbage_stops_the_socket_and_ends_the_reader_with_corrupt_body() -> None:
    reader = Reader()
    inflating, socket, _ = connected(reader)
    inflating.dataReceived(b"\x1f\x8b\x08\x00garbage" * 10)
    assert socket.stopped and reader.lost is None
    inflating.connectionLost(Failure(ResponseDone()))
    assert reader.lost is not None and reader.lost.check(CorruptBody)
    assert "does not inflate" in str(reader.lost.value)


def test_a_stop_while_paused_drops_what_is_held_and_ends_at_once() -> None:
    reader = Reader(pause_after=1)
    inflating, socket, clock = connected(reader)
    inflating.dataReceived(gzip(b"y" * (4 * INFLATE_STEP)))
    reader.transport.stopProducing()
    assert socket.stopped
    inflating.connectionLost(Failure(ResponseDone()))
    clock.advance(0)
    assert len(reader.data) == INFLATE_STEP and reader.lost is not None
