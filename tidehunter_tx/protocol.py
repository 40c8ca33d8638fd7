"""The body protocol: framer -> gate -> sink, with backpressure and a clean stop.

Hand a :class:`StreamProtocol` to ``response.deliverBody`` (treq with
``unbuffered=True``) and it cuts the body into records, offers them to its
gate (which admits exactly as many as the counter allows and delivers them),
pauses the transport while the gate is full and closes the response when the
gate says the run is over.  ``done`` fires with a :class:`StreamOutcome` once
the connection is gone; it never fails, so callers decide what an error means.

On its own (``owns_run=True``, the default) the protocol is its gate's
listener and its connection is the run: it starts the counter if it is not
on, and stops it when the connection ends.  :class:`~tidehunter_tx.Hunter`
passes ``owns_run=False``: its run outlives connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from ._reactor import or_global_reactor
from .framing import Framer, FramingError
from .gate import Ending, IGate, IGateListener

__all__ = ["Ending", "Stalled", "StreamOutcome", "StreamProtocol", "StreamStats"]


class Stalled(Exception):
    """No byte (not even a keep-alive) within the stall timeout."""


@dataclass(frozen=True)
class StreamOutcome:
    ending: Ending
    reason: Failure | None = None


@dataclass
class StreamStats:
    """Counters that outlive one connection; read by status and metrics."""

    bytes: int = 0
    #: Records framed and offered to the gate (each then has one fate).
    read: int = 0
    records: int = 0
    #: Records a sink took but could not deliver (a pipe's reader went away).
    lost: int = 0
    pauses: int = 0
    truncated: int = 0  # partial records dropped because the body ended mid-record
    stalls: int = 0
    reconnects: int = 0
    reconnects_by_cause: dict[str, int] = field(default_factory=dict)
    connected_since: float | None = None
    last_record_at: float | None = None
    last_error: str | None = None
    #: When the socket was paused (for any reason); None while it reads.
    paused_since: float | None = None
    #: Seconds the socket spent paused in pauses that are over.
    paused_before: float = 0.0

    def note_admitted(self, count: int, now: float) -> None:
        self.records += count
        self.last_record_at = now

    def note_paused(self, now: float) -> None:
        self.pauses += 1
        self.paused_since = now

    def note_reading(self, now: float) -> None:
        """The socket reads again, or the connection is gone."""
        if self.paused_since is not None:
            self.paused_before += max(now - self.paused_since, 0.0)
            self.paused_since = None

    def paused_seconds(self, now: float) -> float:
        """Seconds paused in all, the pause under way included."""
        if self.paused_since is None:
            return self.paused_before
        return self.paused_before + max(now - self.paused_since, 0.0)


_CLEAN_END = Failure(ResponseDone())

#: Why the transport is paused: the sink is full, or somebody asked.
PAUSE_SINK = "sink"
PAUSE_USER = "user"


@implementer(IGateListener)
class StreamProtocol(Protocol):
    """Frames one response body and offers its records to a gate.

    The framer, gate and stats are shared across reconnects by the caller;
    this object lives for one connection.  Re-entrancy is expected: offering
    records can run a consumer's callback synchronously, and that consumer may
    stop the stream; every step after an offer checks for that.
    """

    def __init__(
        self,
        framer: Framer,
        gate: IGate,
        stats: StreamStats | None = None,
        clock: IReactorTime | None = None,
        stall_timeout: float | None = None,
        *,
        owns_run: bool = True,
    ) -> None:
        self.done: Deferred[StreamOutcome] = Deferred()
        self.stats = StreamStats() if stats is None else stats
        self._owns_run = owns_run
        self._stall_timeout = stall_timeout
        self._stall_call: IDelayedCall | None = None
        self._last_byte_at = 0.0
        self._failure: Failure | None = None
        self._framer = framer
        self._gate = gate
        self._clock: IReactorTime = or_global_reactor(clock)
        self._pause_reasons: set[str] = set()
        self._stopping: Ending | None = None
        self._lost = False

    # -- IGateListener, when this connection is the run

    def admitted(self, count: int) -> None:
        self.stats.note_admitted(count, self._clock.seconds())

    def ended(self, ending: Ending, reason: Failure | None) -> None:
        self.stop(ending, reason)

    @property
    def paused(self) -> bool:
        return bool(self._pause_reasons)

    def connectionMade(self) -> None:
        if self._owns_run:
            self._gate.set_listener(self)
            self._gate.start(None).addErrback(self._start_failed)
        if self._stopping is not None:
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._arm_stall_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._stopping is not None:
            return  # bytes after a stop are not wanted; nothing was admitted
        self.stats.bytes += len(data)
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
        if PAUSE_SINK not in self._pause_reasons and self._gate.full:
            self.pause(PAUSE_SINK)
            self._gate.set_drain_callback(self._sink_drained)

    def _deliver(self, records: list[bytes]) -> None:
        """Offer the records; the gate says (maybe later) what it admitted."""
        if records:
            self.stats.read += len(records)
            framer = self._framer
            self._gate.offer(records, framer.position, framer.record_positions)

    def _start_failed(self, failure: Failure) -> None:
        self.stop(Ending.FAILED, failure)

    def pause(self, reason: str) -> None:
        """Stop reading from the socket; the server stalls once buffers fill."""
        if self._stopping is not None or self._lost:
            return
        if not self._pause_reasons:
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self.stats.note_paused(self._clock.seconds())
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
            self.stats.note_reading(self._clock.seconds())
            self._arm_stall_timer()

    def stop(
        self, ending: Ending = Ending.STOPPED, reason: Failure | None = None
    ) -> None:
        """Close the response now, even mid-pause or on a silent stream."""
        if self._stopping is not None or self._lost:
            return
        self._stopping = ending
        self._failure = self._failure or reason
        self._gate.set_drain_callback(None)
        self._disarm_stall_timer()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = _CLEAN_END) -> None:
        if self._lost:
            return
        self._lost = True
        self.stats.note_reading(self._clock.seconds())
        self._gate.set_drain_callback(None)
        self._disarm_stall_timer()
        if self._framer.close():
            self.stats.truncated += 1
        if self._owns_run:
            self._gate.set_listener(None)
            self._gate.finish()
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
            stalled = Stalled(f"no byte for {self._stall_timeout:g} s (stall timeout)")
            self.stop(Ending.STALLED, Failure(stalled))
        else:
            self._stall_call = self._clock.callLater(
                self._stall_timeout - idle, self._check_stall
            )
