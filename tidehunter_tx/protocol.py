"""The body protocol: framer -> gate -> sink, with backpressure and a clean stop.

Hand a :class:`StreamProtocol` to ``response.deliverBody`` (treq with
``unbuffered=True``) and it cuts the body into records, admits exactly as many
as the counter allows, puts them into the sink, pauses the transport while the
sink is full and closes the response when the limit is reached or the counter
is switched off.  ``done`` fires with a :class:`StreamOutcome` once the
connection is gone; it never fails, so callers decide what an error means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from .counter import Counter
from .framing import Framer, FramingError
from .sinks import Sink

__all__ = ["Ending", "StreamOutcome", "StreamProtocol", "StreamStats"]


class Ending(enum.Enum):
    """Why a connection's body stopped flowing."""

    LIMIT = "limit"  # the record limit was reached
    STOPPED = "stopped"  # the counter was switched off (tide_off, a consumer)
    ENDED = "ended"  # the server ended the body cleanly
    FAILED = "failed"  # the connection broke (reset, bad chunking, bad framing)
    STALLED = "stalled"  # no byte for the stall timeout (keep-alives count)


@dataclass(frozen=True)
class StreamOutcome:
    ending: Ending
    reason: Failure | None = None


@dataclass
class StreamStats:
    """Counters that outlive one connection; read by status and metrics."""

    bytes: int = 0
    records: int = 0
    pauses: int = 0
    truncated: int = 0  # partial records dropped because the body ended mid-record
    stalls: int = 0
    reconnects: int = 0
    reconnects_by_cause: dict[str, int] = field(default_factory=dict)
    connected_since: float | None = None
    last_record_at: float | None = None
    last_error: str | None = None


_CLEAN_END = Failure(ResponseDone())

#: Why the transport is paused: the sink is full, or somebody asked.
PAUSE_SINK = "sink"
PAUSE_USER = "user"


class StreamProtocol(Protocol):
    """Frames, gates and delivers one response body.

    The framer, counter and sink are shared across reconnects by the caller;
    this object lives for one connection.  Re-entrancy is expected: putting a
    record can run a consumer's callback synchronously, and that consumer may
    stop the stream; every step after a put checks for that.
    """

    def __init__(
        self,
        framer: Framer,
        counter: Counter,
        sink: Sink,
        stats: StreamStats,
        clock: IReactorTime,
        stall_timeout: float | None = None,
    ) -> None:
        self.done: Deferred[StreamOutcome] = Deferred()
        #: Records admitted on this connection (a reconnect policy resets its
        #: backoff only once a record has arrived).
        self.records = 0
        self._sink_admits = bool(getattr(sink, "admits", False))
        self._stall_timeout = stall_timeout
        self._stall_call: IDelayedCall | None = None
        self._last_byte_at = 0.0
        self._failure: Failure | None = None
        self._framer = framer
        self._counter = counter
        self._sink = sink
        self._stats = stats
        self._clock = clock
        self._pause_reasons: set[str] = set()
        self._stopping: Ending | None = None
        self._lost = False

    @property
    def paused(self) -> bool:
        return bool(self._pause_reasons)

    def connectionMade(self) -> None:
        if self._stopping is not None:
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._arm_stall_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._stopping is not None:
            return  # bytes after a stop are not wanted; nothing was admitted
        stats = self._stats
        stats.bytes += len(data)
        if self._stall_call is not None:
            self._last_byte_at = self._clock.seconds()
        try:
            records = self._framer.feed(data)
        except FramingError as error:
            # A bad length line: the records before it are good, the rest of
            # this connection's bytes cannot be trusted.  Deliver, then end it
            # and let the reconnect policy decide.
            broken = Failure()
            self._deliver(error.records)
            self._failure = self._failure or broken
            self.stop(Ending.FAILED)
            return
        self._deliver(records)
        if self._stopping is not None:
            return
        if PAUSE_SINK not in self._pause_reasons and self._sink.full:
            self.pause(PAUSE_SINK)
            self._sink.set_drain_callback(self._sink_drained)

    def _deliver(self, records: list[bytes]) -> None:
        """Gate the records and hand the admitted ones to the sink."""
        if not records:
            return
        if self._sink_admits:
            # Redis decides what is admitted; its answer comes back later.
            self._sink.put(records)
        else:
            counter, stats = self._counter, self._stats
            wanted = len(records)
            admitted = counter.admit(wanted)
            if admitted:
                self._sink.put(records if admitted == wanted else records[:admitted])
                stats.records += admitted
                self.records += admitted
                stats.last_record_at = self._clock.seconds()
            if self._stopping is not None:
                return  # a consumer stopped us from inside put()
            if admitted < wanted or counter.limit_reached:
                self.stop(Ending.LIMIT if counter.started else Ending.STOPPED)

    def pause(self, reason: str) -> None:
        """Stop reading from the socket; the server stalls once buffers fill."""
        if self._stopping is not None or self._lost:
            return
        if not self._pause_reasons:
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self._stats.pauses += 1
            # A pause of our own is never a stall.
            self._disarm_stall_timer()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and self._stopping is None and not self._lost:
            assert self.transport is not None
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            self._arm_stall_timer()

    def stop(
        self, ending: Ending = Ending.STOPPED, reason: Failure | None = None
    ) -> None:
        """Close the response now, even mid-pause or on a silent stream."""
        if self._stopping is not None or self._lost:
            return
        self._stopping = ending
        self._failure = self._failure or reason
        self._sink.set_drain_callback(None)
        self._disarm_stall_timer()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = _CLEAN_END) -> None:
        if self._lost:
            return
        self._lost = True
        self._sink.set_drain_callback(None)
        self._disarm_stall_timer()
        if self._framer.close():
            self._stats.truncated += 1
        if self._stopping is not None:
            outcome = StreamOutcome(self._stopping, self._failure)
        elif reason.check(ResponseDone, PotentialDataLoss):
            outcome = StreamOutcome(Ending.ENDED)
        else:
            outcome = StreamOutcome(Ending.FAILED, reason)
        self.done.callback(outcome)

    def _sink_drained(self) -> None:
        self.resume(PAUSE_SINK)

    def _arm_stall_timer(self) -> None:
        if self._stall_timeout is None or self._stall_call is not None:
            return
        self._last_byte_at = self._clock.seconds()
        self._stall_call = self._clock.callLater(self._stall_timeout, self._check_stall)

    def _disarm_stall_timer(self) -> None:
        call, self._stall_call = self._stall_call, None
        if call is not None and call.active():
            call.cancel()

    def _check_stall(self) -> None:
        # One timer per timeout rather than one reset per chunk: dataReceived
        # only notes the time, and this re-arms for whatever is left.
        assert self._stall_timeout is not None
        idle = self._clock.seconds() - self._last_byte_at
        if idle >= self._stall_timeout:
            self._stall_call = None
            self.stop(Ending.STALLED)
        else:
            self._stall_call = self._clock.callLater(
                self._stall_timeout - idle, self._check_stall
            )
