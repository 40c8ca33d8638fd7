"""The techies state-counter hash, shared by every hunter that names it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._reactor import or_global_reactor
from ..counter import CounterState
from ..gate import IGate
from ._scripts import START, STOP

if TYPE_CHECKING:
    from ..sinks import Sink

__all__ = ["RedisStateCounter", "RedisUnavailable"]

log = Logger()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisUnavailable(Exception):
    """The shared counter could not be reached when a run started."""


class RedisStateCounter(CounterState):
    """The techies state counter hash, shared by every hunter that names it.

    ``count``/``total``/``state``/``limit`` are a cache, refreshed by every
    script reply and by a poll (``poll_interval``), which is how a consumer's
    ``HSET key state 0`` (techies ``stop()``) reaches every hunter within a
    second even on a silent stream.
    """

    def __init__(
        self,
        connection: Any,
        key: str,
        *,
        poll_interval: float = 0.25,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.connection = connection
        self.key = key
        self.start_timeout = 15.0
        #: The hash field a feed's resume position is kept in (the gate sets
        #: it), and what it held when the run started.
        self.position_field = "position"
        self.position: bytes | None = None
        self._clock: IReactorTime = or_global_reactor(clock)
        self._poll = LoopingCall(self.refresh)
        self._poll.clock = self._clock
        self._poll_interval = poll_interval
        self._watching = False
        #: Redis's run_id when the run started: tells a restart from a flush.
        self.run_id: str | None = None

    def _limit_changed(self, value: int) -> None:
        """The limit lives in the hash, for every hunter sharing it."""
        self.connection.hset(self.key, "limit", value).addErrback(self._log_error)

    def start(self, limit: int | None = None) -> Deferred[None]:
        """Switch on (or join a run already on), then watch for a stop.

        Fails with a clear error when Redis does not answer in time (down, or
        refusing the password) rather than leaving the hunter waiting.
        """
        if limit is not None:
            self._limit = limit
        arg = "" if limit is None else str(limit)
        d = self.connection.eval(
            START, keys=[self.key], args=[arg, self.position_field]
        )
        d.addTimeout(self.start_timeout, self._clock, onTimeoutCancel=self._no_answer)
        d.addCallback(self._update)
        d.addCallback(lambda _: self._read_run_id())
        d.addCallback(self._started)
        return d  # type: ignore[no-any-return]

    def _started(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.lost = None
        self._watch()

    def _read_run_id(self) -> Deferred[str | None]:
        """Redis's ``run_id`` (INFO server), or None when it cannot be read."""
        d = self.connection.execute_command("INFO", "server")

        def parse(info: Any) -> str | None:
            for line in _text(info).splitlines():
                if line.startswith("run_id:"):
                    return line.partition(":")[2].strip()
            return None

        d.addCallback(parse)
        d.addErrback(lambda _: None)
        return d  # type: ignore[no-any-return]

    def vanished(self) -> None:
        """The hash is gone mid-run: find out why, then fail every run on it."""
        if self.lost is not None:
            return
        self.lost = f"the shared counter {self.key!r} vanished from Redis"
        self._read_run_id().addCallback(self._tell_lost)

    def _tell_lost(self, run_id: str | None) -> None:
        if self.run_id is None or run_id is None:
            why = "Redis's run_id unknown"
        elif run_id != self.run_id:
            why = "Redis restarted: its run_id changed, so it lost its data"
        else:
            why = "same Redis run_id: flushed, evicted or deleted"
        self.lost = (
            f"the shared counter {self.key!r} vanished from Redis mid-run ({why})"
        )
        self._notify_stopped()

    def _no_answer(self, result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(CancelledError):
            raise RedisUnavailable(
                f"Redis counter {self.key!r} did not answer within {timeout:g} s "
                "(is Redis up, and is the password right?)"
            )
        return result

    def stop(self) -> Deferred[None]:
        """Switch every hunter sharing this counter off."""
        was_started = self.started
        self.state = 0
        d = self.connection.eval(STOP, keys=[self.key], args=[])
        d.addCallback(self._update)
        d.addErrback(self._log_error)
        if was_started:
            self._notify_stopped()
        return d  # type: ignore[no-any-return]

    def refresh(self) -> Deferred[None]:
        d = self.connection.hmget(self.key, ["state", "count", "total", "limit"])
        d.addCallback(self._update)
        d.addErrback(lambda _: None)  # Redis away: the next poll tries again
        return d  # type: ignore[no-any-return]

    def close(self) -> None:
        self._watching = False
        if self._poll.running:
            self._poll.stop()

    def update(self, state: Any, count: Any, limit: Any) -> None:
        """Take what a script reply says about the counter."""
        was_over = self.stopped or self.limit_reached
        self.state = 1 if _text(state) == "1" else 0
        self.count = int(count)
        self._limit = int(limit)
        # Switched off, or the shared limit reached by another hunter: either
        # way every hunter sharing the counter must end, quiet streams too.
        if not was_over and (self.stopped or self.limit_reached):
            self._notify_stopped()

    def _update(self, fields: list[Any]) -> None:
        if fields[0] is None and self._watching:
            # Every start writes the hash: gone now, it vanished.  Never a stop.
            self.vanished()
            return
        if len(fields) > 4:
            value = fields[4]
            self.position = value.encode() if isinstance(value, str) else value
        state, count, total, limit = (f if f is not None else b"0" for f in fields[:4])
        self.total = int(total)
        self.update(state, count, limit)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self._poll.start(self._poll_interval, now=False)

    def _log_error(self, failure: Failure) -> None:
        log.failure(
            "tidehunter: Redis counter command failed",
            failure,
            tidehunter_event="redis_counter_failed",
        )

    def gate(self, sink: Sink) -> IGate:
        """Admit in Redis, through this counter, into a local ``sink``."""
        from ._gate import RedisGate

        return RedisGate(self, local=sink)
