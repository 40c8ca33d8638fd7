"""The admission contract: which framed records a run takes, and what became of them.

A gate stands between the framer and the sink.  The body protocol offers it
every record it frames, with the stream's position after them; the gate
decides how many are admitted (the limit, the on/off switch), delivers those,
and tells its listener, maybe later, how many were delivered and when the run
must end.  Records it does not admit because the run was over are counted in
``dropped``: every record read is delivered, dropped with that count, or (for
a gate that talks to another process) still unconfirmed, which ``settled()``
waits for.

Two implementations: :class:`LocalGate` (a :class:`~tidehunter_tx.StateCounter`
in this process in front of any sink) and
:class:`~tidehunter_tx.redis.RedisGate` (one Redis script admits, pushes and
counts, for hunters that share a counter).  Nothing upstream asks which kind
it has.
"""

from __future__ import annotations

import bisect
import enum
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from .counter import CounterState, StateCounter
    from .sinks import DrainCallback, Sink

__all__ = [
    "CounterGate",
    "CounterLost",
    "Ending",
    "IGate",
    "IGateListener",
    "LocalGate",
    "PositionStore",
    "PushLatency",
    "position_after",
]


class PushLatency:
    """How long a gate's writes to another process took, as a histogram.

    Kept here, in plain numbers, so a gate needs no metrics library: the
    metrics collector reads ``buckets``, ``counts``, ``sum`` and ``count``.
    """

    #: Upper bounds in seconds, Prometheus's default buckets.
    BUCKETS: tuple[float, ...] = (
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
    )  # fmt: skip

    def __init__(self) -> None:
        self.buckets = self.BUCKETS
        #: Observations per bucket (not cumulative); the last is above every bound.
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1


class PositionStore(Protocol):
    """Keeps a run's resume position beside the records it belongs to.

    A file sink's state file is one: ``save`` is called after the records the
    position follows are in the sink, so what it holds never runs ahead of
    the data.
    """

    def load(self) -> bytes | None:
        """The position saved by an earlier run (None: from the start)."""

    def save(self, position: bytes | None) -> None:
        """The records put so far end at ``position``."""


def position_after(
    admitted: int,
    offered: int,
    position: bytes | None,
    positions: list[bytes | None] | None,
) -> bytes | None:
    """Where the stream stands after the first ``admitted`` of ``offered``.

    ``position`` is after all of them; with only part admitted (the limit
    cut the chunk) it is the record's own position, or None if unknown.
    """
    if admitted >= offered:
        return position
    if positions is not None and 0 < admitted <= len(positions):
        return positions[admitted - 1]
    return None


class Ending(enum.Enum):
    """Why a connection's body stopped flowing, or why a run must end."""

    LIMIT = "limit"  # the record limit was reached
    STOPPED = "stopped"  # switched off (tide_off, a consumer, a halt)
    ENDED = "ended"  # the server ended the body cleanly
    FAILED = "failed"  # the connection broke, or the sink refused records
    STALLED = "stalled"  # no byte for the stall timeout (keep-alives count)


class CounterLost(Exception):
    """The shared counter vanished mid-run (Redis restarted empty, flushed,
    evicted, deleted): a failure to report, never read as a stop."""


class IGateListener(Interface):
    """Told by a gate what became of the records offered to it."""

    def admitted(count: int) -> None:
        """``count`` more records reached the sink, in the order offered."""

    def ended(ending: Ending, reason: Failure | None) -> None:
        """The run must end now: ``LIMIT``, ``STOPPED`` or ``FAILED`` (a refusal
        no retry can cure, described by ``reason``).  May be told more than once.
        """


class IGate(Interface):
    """Admits framed records into a sink, exactly up to the limit."""

    counter = Attribute("The state counter: count, total, limit, started, stop().")
    full = Attribute("True while the stream should pause until the drain callback.")
    over = Attribute("True once the run must end (switched off or limit reached).")
    dropped = Attribute("Records offered but not admitted because the run was over.")
    spilled = Attribute("Records written to a spill file rather than delivered.")
    unconfirmed = Attribute(
        "Records offered whose fate is not known yet (sent, not answered)."
    )
    waiting = Attribute(
        "Why delivery waits (a refusal that can pass, retried), or None."
    )
    position = Attribute(
        "The resume position stored with the last admitted records (bytes or None)."
    )
    batches_in_flight = Attribute(
        "Writes sent to another process and not answered yet (0 for a local gate)."
    )
    push_latency = Attribute(
        "A PushLatency of those writes' round trips, or None for a local gate."
    )

    def set_listener(listener: IGateListener | None) -> None:
        """Who hears about admitted records and the end of the run."""

    def start(limit: int | None) -> Deferred[None]:
        """Begin (or join) a run; ``limit`` None keeps the counter's limit.

        Fires once records may be offered; fails when the counter cannot be
        reached.  ``position`` is readable once it has fired.
        """

    def finish() -> None:
        """This hunter's part of the run is over (a local counter is stopped)."""

    def stop() -> Deferred[None]:
        """The off switch of the run, for every hunter sharing the counter."""

    def set_limit(limit: int) -> None:
        """Change the limit of the run; at or below the count the run ends."""

    def offer(
        records: list[bytes],
        position: bytes | None,
        positions: list[bytes | None] | None = None,
    ) -> None:
        """Take framed records; ``position`` is where the stream stands after them,
        ``positions`` (when known) where it stood after each one."""

    def keep_positions(feed_id: str, store: PositionStore | None) -> None:
        """Keep this feed's resume position under ``feed_id`` (where the
        records go, e.g. a Redis hash) and in ``store`` (a state file), and
        start from what they hold."""

    def set_drain_callback(callback: DrainCallback | None) -> None:
        """Call ``callback`` once a full gate has room again."""

    def settled() -> Deferred[None]:
        """Fires once every record offered has its fate."""

    def close() -> Deferred[None]:
        """Flush and release the sink and connections; fires when done."""


class CounterGate:
    """What every gate shares: its listener, the counter's switch and limit.

    Subclasses say where records go and, for a counter kept in this process,
    admit with :meth:`_admit_here`, which is exact however records are chunked.
    """

    counter: CounterState

    def __init__(self, counter: CounterState) -> None:
        self.counter = counter
        self.dropped = 0
        self.spilled = 0
        self.position: bytes | None = None
        self.feed_id = ""
        self.store: PositionStore | None = None
        self.waiting: str | None = None
        self.push_latency: PushLatency | None = None
        self._listener: IGateListener | None = None
        self._watching = False

    @property
    def batches_in_flight(self) -> int:
        return 0

    @property
    def over(self) -> bool:
        counter = self.counter
        return not counter.started or counter.limit_reached

    def set_listener(self, listener: IGateListener | None) -> None:
        self._listener = listener

    def keep_positions(self, feed_id: str, store: PositionStore | None) -> None:
        self.feed_id = feed_id
        self.store = store

    def _stored(self, position: bytes | None) -> None:
        """The records admitted so far end at ``position``: remember it."""
        if position is None:
            return
        self.position = position
        if self.store is not None:
            self.store.save(position)

    def set_limit(self, limit: int) -> None:
        self.counter.limit = limit
        if self.counter.started and self.counter.limit_reached:
            self._end(Ending.LIMIT)

    def _start_here(self, counter: StateCounter, limit: int | None) -> None:
        """Begin (or join) a run of a counter kept in this process."""
        if limit is not None:
            counter.limit = limit
        if not counter.started:
            counter.start()

    def _admit_here(self, counter: StateCounter, records: list[bytes]) -> list[bytes]:
        """The records ``counter`` admits; the rest are counted as dropped."""
        wanted = len(records)
        admitted = counter.admit(wanted)
        if admitted == wanted:
            return records
        self.dropped += wanted - admitted
        return records[:admitted]

    def _watch_counter(self) -> None:
        if not self._watching:
            self._watching = True
            self.counter.add_stop_listener(self._end_if_over)

    def _unwatch_counter(self) -> None:
        if self._watching:
            self._watching = False
            self.counter.remove_stop_listener(self._end_if_over)

    def _end_if_over(self) -> None:
        """Switched off, or the limit reached (here or by another hunter)."""
        lost = self.counter.lost
        if lost is not None:
            self._end(Ending.FAILED, Failure(CounterLost(lost)))
        elif self.over:
            self._end(Ending.LIMIT if self.counter.started else Ending.STOPPED)

    def _end(self, ending: Ending, reason: Failure | None = None) -> None:
        if self._listener is not None:
            self._listener.ended(ending, reason)


@implementer(IGate)
class LocalGate(CounterGate):
    """An in-memory state counter in front of a sink: admission is synchronous.

    ``counter.admit(n)`` counts at once, so the count can never pass the
    limit however the records were chunked; the admitted records go straight
    to the sink.  A consumer's ``counter.stop()`` reaches the listener at once,
    which is what makes the off switch instant in one process.
    """

    counter: StateCounter

    def __init__(self, counter: StateCounter, sink: Sink) -> None:
        super().__init__(counter)
        self.sink = sink

    @property
    def full(self) -> bool:
        return self.sink.full

    @property
    def unconfirmed(self) -> int:
        return 0  # admission and delivery happen in the same call

    def start(self, limit: int | None) -> Deferred[None]:
        self._start_here(self.counter, limit)
        self._watch_counter()
        if self.store is not None:
            self.position = self.store.load()
        return succeed(None)

    def finish(self) -> None:
        self._unwatch_counter()
        if self.counter.started:
            self.counter.stop()

    def stop(self) -> Deferred[None]:
        self.counter.stop()
        return succeed(None)

    def offer(
        self,
        records: list[bytes],
        position: bytes | None,
        positions: list[bytes | None] | None = None,
    ) -> None:
        if not records:
            return
        admitted = self._admit_here(self.counter, records)
        if admitted:
            self.sink.put(admitted)
            self._stored(
                position_after(len(admitted), len(records), position, positions)
            )
            if self._listener is not None:
                self._listener.admitted(len(admitted))
        self._end_if_over()

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        self.sink.set_drain_callback(callback)

    def settled(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return maybeDeferred(self.sink.close).addCallback(lambda _: None)
