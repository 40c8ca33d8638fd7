"""State counters: the on/off switch, the record count and the limit.

The semantics are those of tidehunter's ``SimpleStateCounter`` and techies'
``StateCounter`` so code written for them keeps working: ``state`` is 1 while a
run is on and 0 when it is off; ``count`` counts records of the current run;
a ``start()`` or ``stop()`` moves ``count`` into ``total``.  One difference is
deliberate: admitting records never switches a stopped counter back on (the
original's ``incr()`` did, silently undoing a consumer's ``stop()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .gate import IGate, LocalGate

if TYPE_CHECKING:
    from .sinks import Sink

__all__ = ["Counter", "CounterState", "StateCounter"]

StopListener = Callable[[], None]


class Counter(Protocol):
    """What a hunter needs from a state counter (in memory or shared)."""

    count: int
    total: int
    #: Why the counter is gone (its Redis hash vanished), or None.
    lost: str | None

    @property
    def limit(self) -> int: ...

    @limit.setter
    def limit(self, value: int) -> None: ...

    @property
    def started(self) -> bool: ...

    @property
    def limit_reached(self) -> bool: ...

    # A shared counter answers start/stop with a Deferred.
    def start(self) -> object: ...

    def stop(self) -> object: ...

    def gate(self, sink: Sink) -> IGate:
        """The admission gate that counts through this counter into ``sink``."""
        ...

    def add_stop_listener(self, listener: StopListener) -> None: ...

    def remove_stop_listener(self, listener: StopListener) -> None: ...


class CounterState:
    """What every state counter shares: the switch, the count, the limit.

    Subclasses decide where the truth lives (this process, or a Redis hash
    whose values these attributes cache).
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.state = 0
        self._limit = 0
        self.lost: str | None = None
        self._stop_listeners: list[StopListener] = []

    @property
    def limit(self) -> int:
        """Records allowed in this run; 0 means no limit."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"limit must be >= 0, not {value}")
        self._limit = value
        self._limit_changed(value)

    def _limit_changed(self, value: int) -> None:
        """A subclass that keeps the limit elsewhere writes it through here."""

    @property
    def started(self) -> bool:
        return self.state == 1

    @property
    def stopped(self) -> bool:
        return not self.started

    @property
    def limit_reached(self) -> bool:
        return self._limit > 0 and self.count >= self._limit

    def add_stop_listener(self, listener: StopListener) -> None:
        self._stop_listeners.append(listener)

    def remove_stop_listener(self, listener: StopListener) -> None:
        if listener in self._stop_listeners:
            self._stop_listeners.remove(listener)

    def _notify_stopped(self) -> None:
        for listener in list(self._stop_listeners):
            listener()


class StateCounter(CounterState):
    """In-memory state counter; the gate of the body protocol.

    ``admit(n)`` is the only way records are counted: it returns how many of
    ``n`` records may still be delivered (0 when stopped, capped by ``limit``)
    and counts them at once, so the count can never pass the limit, however
    the records were chunked.  Listeners added with ``add_stop_listener`` are
    called synchronously by ``stop()``: that is what makes the off switch
    instant for a hunter in the same process.
    """

    def __init__(self, limit: int = 0) -> None:
        super().__init__()
        self.limit = limit

    def start(self) -> None:
        self.total += self.count
        self.count = 0
        self.state = 1

    def stop(self) -> None:
        was_started = self.started
        self.total += self.count
        self.count = 0
        self.state = 0
        if was_started:
            self._notify_stopped()

    def gate(self, sink: Sink) -> IGate:
        """Admit through this counter, in this process, into ``sink``."""
        return LocalGate(self, sink)

    def admit(self, wanted: int) -> int:
        """Count and return how many of ``wanted`` records may be delivered."""
        if self.state != 1:
            return 0
        if self._limit:
            room = self._limit - self.count
            if wanted > room:
                wanted = max(room, 0)
        self.count += wanted
        return wanted

    def incr(self, n: int = 1) -> None:
        """Count records delivered outside the gate (kept for the original's API).

        Unlike the original, this does not switch a stopped counter back on.
        """
        self.count += n

    def clear(self) -> None:
        self.stop()
        self.total = 0

    def get_count(self) -> int:
        return self.count

    def get_state(self) -> int:
        return self.state

    def get_total(self) -> int:
        return self.total
