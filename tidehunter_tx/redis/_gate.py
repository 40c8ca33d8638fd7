"""``RedisGate``: admission in Redis, exact across every hunter sharing a counter."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._reactor import or_global_reactor
from ..counter import StateCounter
from ..gate import CounterGate, Ending, IGate, PushLatency, position_after
from ..sinks import DrainCallback, Sink
from ._connection import close_connection, execute_encoded
from ._counter import RedisStateCounter, RedisUnavailable
from ._scripts import ADMIT_AND_PUSH, GAP, LOST, is_noscript, retryable_refusal
from ._spec import RedisSpec
from ._spill import Spilled, write_spill

__all__ = ["MAX_BATCH", "MAX_IN_FLIGHT", "RedisGate", "RedisRefused"]

log = Logger()

#: Records per script call: Lua's unpack() stops near 8,000 values.
MAX_BATCH = 4000
#: Script calls in flight per hunter before the HTTP stream pauses.
MAX_IN_FLIGHT = 4
#: Counting only (a local sink): records waiting for Redis's answer before the
#: stream pauses.  One call is in flight; what is read meanwhile waits and goes
#: as one count, so a call costs the same however many records it counts.
MAX_COUNTED_BACKLOG = MAX_IN_FLIGHT * MAX_BATCH
#: A refusal that can pass (OOM, READONLY, ...): first retry, and the longest
#: wait between retries, in seconds.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


class RedisRefused(Exception):
    """Redis refused a batch in a way no retry cures (WRONGTYPE, NOPERM, ...)."""


@dataclass
class _Batch:
    seq: int
    records: list[bytes]
    #: Where the stream stands after the batch, and after each of its records
    #: (sent only when Redis decides how many are admitted).
    position: bytes | None = None
    positions: list[bytes | None] | None = None
    #: Apply even if an earlier sequence number is missing from Redis's history.
    force: bool = False
    #: Known not applied, waiting to be sent again (a refusal that can pass).
    held: bool = False
    #: Refused or its answer lost: Redis may hold some of it (a spill says so).
    maybe_applied: bool = True
    #: When the last call carrying it was sent (reactor time).
    sent_at: float = 0.0


@implementer(IGate)
class RedisGate(CounterGate):
    """Admits batches with one Redis script call each, and pushes them.

    Two ways to count.  With a :class:`RedisStateCounter` the script reads the
    shared hash, caps the batch by ``limit - count``, pushes and counts in one
    atomic step, so any number of hunters sharing the counter deliver exactly
    ``limit`` records.  With a :class:`~tidehunter_tx.StateCounter` (a Redis
    sink, the count kept in this process) records are admitted here and the
    script only pushes; it leaves no counter key in Redis.

    Where records go: ``target`` (a Redis list or stream) or ``local`` (a file
    or queue in this process: then only the number of records travels to
    Redis, to be counted).  Up to ``max_in_flight`` calls are in flight
    (reading overlaps pushing); at the cap the gate is ``full`` and the stream
    pauses.  While Redis is away batches wait here (bounded: the stream is
    paused) and are re-sent in order when it returns; the script's
    per-producer sequence numbers make a re-sent batch count once.
    """

    def __init__(
        self,
        counter: RedisStateCounter | StateCounter,
        *,
        connection: Any = None,
        target: RedisSpec | None = None,
        local: Sink | None = None,
        max_in_flight: int | None = None,
        max_batch: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        shared = isinstance(counter, RedisStateCounter)
        if connection is None:
            if not isinstance(counter, RedisStateCounter):
                raise ValueError("a gate with a local counter needs a connection")
            connection = counter.connection
        if (target is None) == (local is None):
            raise ValueError("give the gate a Redis target or a local sink")
        if not shared and target is None:
            raise ValueError("a local counter with a local sink needs no Redis")
        super().__init__(counter)
        self._shared_counter = (
            counter if isinstance(counter, RedisStateCounter) else None
        )
        self._local_counter = counter if isinstance(counter, StateCounter) else None
        self.connection = connection
        self.local = local
        self.mode = (
            "none" if target is None else ("stream" if target.stream else "list")
        )
        self.target_key = target.key if target is not None else counter_key(counter)
        self.maxlen = 0 if target is None else target.maxlen
        history_owner = counter_key(counter) if shared else self.target_key
        self.seen_key = f"{history_owner}:producers"
        #: The hash the feed's position is kept in, with the records: the
        #: counter's, or beside a Redis target; none for a local sink counted
        #: here (that sink's own store keeps it).
        self.position_key = (
            counter_key(counter)
            if shared
            else (f"{self.target_key}:positions" if target is not None else "")
        )
        # The script's KEYS: the counter hash ('' when counted here), the
        # target, the producers' history, the positions hash.
        self._script_keys = [
            counter_key(counter).encode(),
            self.target_key.encode(),
            self.seen_key.encode(),
            self.position_key.encode(),
        ]
        self.producer = uuid.uuid4().hex
        if max_in_flight is None:
            max_in_flight = 1 if local is not None else MAX_IN_FLIGHT
        self.max_in_flight = max_in_flight
        if max_batch is None:
            # Only a count travels for a local sink: unpack() sets no limit.
            max_batch = MAX_COUNTED_BACKLOG if local is not None else MAX_BATCH
        self.max_batch = max_batch
        self._seq = 0
        self._script_sent = False
        self._refused = False
        self._clock: IReactorTime = or_global_reactor(clock)
        self._latency = self.push_latency = PushLatency()
        # Records wait here unnumbered: a batch takes its sequence number when
        # it is sent, so batches queued behind the cap merge into bigger ones.
        self._queued: deque[list[bytes]] = deque()
        # The stream's position after each queued record list, and after each
        # of its records when Redis decides what is admitted.
        self._queued_ids: deque[bytes | None] = deque()
        self._queued_positions: deque[list[bytes | None] | None] = deque()
        self._in_flight: deque[_Batch] = deque()
        # Records queued or in flight: offered, fate not known yet.
        self._backlog = 0
        self._on_drain: DrainCallback | None = None
        self._closing = False
        self._spilled = False
        self._idle: list[Deferred[None]] = []
        self._waiting_since = 0.0
        self._retry_delay = RETRY_FIRST
        self._retry_call: Any = None
        self._retrying: _Batch | None = None
        # Batches the run ended with, not confirmed: kept for the spill.
        self._kept: list[_Batch] = []

    # -- IGate

    @property
    def full(self) -> bool:
        if self.waiting is not None or self._refused:
            return True
        if self.local is not None:
            return self.local.full or self._backlog >= MAX_COUNTED_BACKLOG
        return len(self._in_flight) + len(self._queued) >= self.max_in_flight

    def start(self, limit: int | None) -> Deferred[None]:
        if self._closing:
            # A closed gate forgot its history in Redis: start a fresh one.
            self.producer, self._seq = uuid.uuid4().hex, 0
        self._closing = self._spilled = self._refused = False
        self._kept = []
        self._watch_counter()
        if self._shared_counter is not None:
            # Join the run; a limit of 0 (or None) leaves the shared one alone.
            self._shared_counter.position_field = self.position_field
            started = self._shared_counter.start(limit or None)
            return started.addCallback(self._joined)
        assert self._local_counter is not None
        self._start_here(self._local_counter, limit)
        if self.store is not None:
            self.position = self.store.load()
        elif self.feed_id and self.position_key:
            return self._read_position()
        return succeed(None)

    @property
    def position_field(self) -> str:
        """The field of the positions hash this feed's position is kept in."""
        return f"position:{self.feed_id}" if self.feed_id else "position"

    def _read_position(self) -> Deferred[None]:
        """Where an earlier run left this feed (a Redis sink counted here)."""
        reading: Deferred[Any] = self.connection.hget(
            self.position_key, self.position_field
        )
        reading.addTimeout(15.0, self._clock)

        def found(value: Any) -> None:
            self.position = value.encode() if isinstance(value, str) else value

        def unread(failure: Failure) -> None:
            raise RedisUnavailable(
                f"could not read the stream's position from Redis key "
                f"{self.position_key!r}: {_one_line(failure)}"
            )

        return reading.addCallbacks(found, unread)

    def finish(self) -> None:
        self._unwatch_counter()
        # A shared counter stays as the run left it, for the other hunters and
        # the consumers; a count kept here ends with this hunter's run.
        if self._local_counter is not None and self._local_counter.started:
            self._local_counter.stop()

    def stop(self) -> Deferred[None]:
        if self._shared_counter is not None:
            return self._shared_counter.stop()
        assert self._local_counter is not None
        self._local_counter.stop()
        return succeed(None)

    def offer(
        self,
        records: list[bytes],
        position: bytes | None,
        positions: list[bytes | None] | None = None,
    ) -> None:
        if self._closing or not records:
            return
        if self._local_counter is None:
            self._queue(records, position, positions)  # Redis decides
            return
        admitted = self._admit_here(self._local_counter, records)
        if admitted:
            at = position_after(len(admitted), len(records), position, positions)
            self._queue(admitted, at, None)
        self._end_if_over()

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        self._on_drain = callback
        if callback is not None and self.local is not None and self.local.full:
            self.local.set_drain_callback(self._maybe_drained)

    @property
    def unconfirmed(self) -> int:
        return self._backlog

    @property
    def batches_in_flight(self) -> int:
        return len(self._in_flight)

    def settled(self) -> Deferred[None]:
        if not self._in_flight and (not self._queued or self._refused):
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._idle.append(waiting)
        return waiting

    def close(self) -> Deferred[None]:
        """Stop watching, forget this producer's history, close sink and connection.

        The history stays when records were spilled: it is what lets the
        script recognise a spilled batch that Redis did apply.
        """
        self._closing = True
        self._cancel_retry()
        if self._shared_counter is not None:
            self._shared_counter.close()
        forgetting: Deferred[Any] = succeed(None)
        if not self._spilled and not self._in_flight:
            forgetting = self.connection.hdel(self.seen_key, [self.producer])
            # Redis away: the history's TTL ends it; closing does not wait.
            forgetting.addTimeout(1.0, self._clock)
            forgetting.addErrback(lambda _: None)
        closing = forgetting.addCallback(
            lambda _: self.local.close() if self.local is not None else None
        )
        closing.addCallback(lambda _: close_connection(self.connection))
        return closing.addCallback(lambda _: None)

    # -- what is owed

    def drop_queued(self) -> int:
        """Forget batches not yet sent (after a stop they would not be admitted).

        Counted in ``dropped`` (and so in Status): never a silent loss.
        """
        dropped = sum(len(records) for records in self._queued)
        self._queued.clear()
        self._queued_ids.clear()
        self._queued_positions.clear()
        self.dropped += dropped
        self._backlog -= dropped
        return dropped

    def spill(self, path: str) -> Spilled:
        """Write every unconfirmed record to ``path`` (JSON lines); never drop.

        One object per record: ``data``, the ``key`` it was for, and whether it
        was ``sent`` (Redis may have applied it before the outage; ``producer``
        and ``seq`` identify its batch, which the admit-and-push script would
        recognise if re-sent) or never sent.  Returns the (sent, unsent)
        counts and the file written: ``path``, or ``path.N`` when it was taken.
        """
        owed = sorted([*self._kept, *self._in_flight], key=lambda batch: batch.seq)
        batches: list[tuple[int | None, list[bytes]]] = [
            (
                batch.seq if batch.maybe_applied and not batch.held else None,
                batch.records,
            )
            for batch in owed
        ]
        batches += [(None, records) for records in self._queued]
        spilled = write_spill(path, self.target_key, self.producer, batches)
        total = spilled.sent + spilled.unsent
        if total:
            self._closing = self._spilled = True
            # Spilled is a fate: no longer in flight.
            self.spilled += total
            self._backlog -= total
        return spilled

    # -- talking to Redis

    def _joined(self, _: object) -> Deferred[None] | None:
        shared = self._shared_counter
        assert shared is not None
        self.position = self.store.load() if self.store is not None else shared.position
        if not (shared.started and shared.limit_reached):
            return None
        # A run left on at its limit (by an older hunter, or a techies user)
        # would make this one deliver nothing in silence: end it, as reaching
        # the limit does now, so the next run is a new one.
        log.warn(
            "tidehunter: the shared counter {key!r} was on with its limit "
            "reached ({count} of {limit}), so this run delivers nothing; "
            "ended that run (its count moved into total): run again to "
            "start a new run",
            tidehunter_event="stale_run_ended",
            key=shared.key,
            count=shared.count,
            limit=shared.limit,
        )
        return shared.stop()

    def _queue(
        self,
        records: list[bytes],
        position: bytes | None,
        positions: list[bytes | None] | None,
    ) -> None:
        self._queued.append(records)
        self._queued_ids.append(position)
        self._queued_positions.append(positions)
        self._backlog += len(records)
        self._pump()

    def _pump(self) -> None:
        if self.waiting is not None or self._refused:
            return  # nothing new goes while Redis refuses
        queued = self._queued
        ids = self._queued_ids
        each = self._queued_positions
        while queued and len(self._in_flight) < self.max_in_flight:
            records, position, positions = (
                queued.popleft(),
                ids.popleft(),
                each.popleft(),
            )
            while queued and len(records) + len(queued[0]) <= self.max_batch:
                more, more_positions = queued.popleft(), each.popleft()
                if positions is not None or more_positions is not None:
                    positions = _each(records, position, positions) + _each(
                        more, ids[0], more_positions
                    )
                records = records + more
                position = ids.popleft()
            if len(records) > self.max_batch:
                # The position belongs with the end of the list: it stays queued.
                cut = self.max_batch
                queued.appendleft(records[cut:])
                ids.appendleft(position)
                each.appendleft(None if positions is None else positions[cut:])
                records = records[:cut]
                position = None if positions is None else positions[cut - 1]
                positions = None if positions is None else positions[:cut]
            self._seq += 1
            batch = _Batch(self._seq, records, position, positions)
            self._in_flight.append(batch)
            self._send(batch)

    def _send(self, batch: _Batch, load: bool = False) -> None:
        # The first call sends the script in full; calls pipelined behind it
        # find it loaded.  A Redis that forgot it answers NOSCRIPT (see _failed).
        load = load or not self._script_sent
        positions = [p or b"" for p in batch.positions or ()]
        head = [
            self.producer.encode(),
            b"%d" % (-batch.seq if batch.force else batch.seq),
            self.mode.encode(),
            b"%d" % self.maxlen,
            self.position_field.encode() if self.feed_id and self.position_key else b"",
            batch.position or b"",
            b"%d" % len(positions),
            *positions,
        ]
        # A local sink keeps the records: only their number goes to Redis.
        payload = batch.records if self.mode != "none" else [b"%d" % len(batch.records)]
        command = ADMIT_AND_PUSH.encode(
            self._script_keys,
            head,
            payload,
            load=load,
        )
        batch.sent_at = self._clock.seconds()
        d = execute_encoded(self.connection, command)
        self._script_sent = True
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _answered(self, reply: list[Any], batch: _Batch) -> None:
        self._latency.observe(self._clock.seconds() - batch.sent_at)
        admitted, state, count, limit, replayed, reached = reply
        admitted = int(admitted)
        outcome = int(replayed)
        if outcome == GAP:
            if self._refused:
                self._keep(batch, maybe_applied=False)
                return
            if self.waiting is not None and batch is not self._retrying:
                # Behind a refused batch: it waits for the retry, in order.
                batch.held = True
                return
            # An earlier batch of ours is not applied yet: when it is still
            # ours to re-send (after NOSCRIPT), this one goes again behind
            # it; otherwise Redis forgot the history, and it goes again to
            # be applied regardless.
            batch.force = not any(b.seq < batch.seq for b in self._in_flight)
            self._send(batch)
            return
        if outcome == LOST:
            self._counter_lost(batch)
            return
        if batch is self._retrying:
            self._accepted_again()
        self._settle(batch)
        shared = self._shared_counter
        # Deliver first, then take the counter's news: reaching the limit
        # ends the run, and the records it admitted must be in the sink by then.
        if admitted:
            if self.local is not None:
                self.local.put(batch.records[:admitted])
            self._stored(
                position_after(
                    admitted, len(batch.records), batch.position, batch.positions
                )
            )
            if self._listener is not None:
                self._listener.admitted(admitted)
        if admitted < len(batch.records):
            self.dropped += len(batch.records) - admitted
        if shared is not None and int(reached) and not self._refused:
            # This batch ended the shared run: the limit, not a stop.
            self.drop_queued()
            self._end(Ending.LIMIT)
        if shared is not None:
            shared.update(state, count, limit)
            if not self._refused and (admitted < len(batch.records) or self.over):
                self.drop_queued()
                self._end(Ending.LIMIT if shared.started else Ending.STOPPED)
        self._pump()
        self._after_answer()

    def _failed(self, failure: Failure, batch: _Batch) -> None:
        if (
            self._closing
            and not self._spilled
            and failure.check(txredisapi.ConnectionError)
        ):
            return  # closed on purpose
        if self._spilled:
            return
        if self._refused:
            self._keep(batch, maybe_applied=True)
            return
        if self.waiting is not None and batch is not self._retrying:
            batch.held = True  # goes again, in order, once Redis accepts
            return
        if failure.check(txredisapi.ConnectionError):
            # Lost with the connection: maybe applied, maybe not.  Re-send it
            # (it waits for the reconnect); the sequence number makes it count
            # once.  Failures arrive in send order, so order is kept.
            self._send(batch)
            return
        if is_noscript(failure):
            # Redis forgot the script (restarted, flushed): send it in full.
            # Answers come in send order, so every batch after this one is
            # re-sent after it, and the order of the records holds.
            self._send(batch, load=True)
            return
        refusal = retryable_refusal(failure)
        if refusal is not None:
            self._hold(batch, refusal)
            return
        # No retry cures this refusal: the run ends, and what it held and what
        # waits behind it stay owed (the daemon spills them), never dropped.
        message = _one_line(failure)
        log.error(
            "tidehunter: Redis refused a batch of {count} records: {error}",
            tidehunter_event="redis_refused",
            count=len(batch.records),
            error=message,
        )
        self._refused = True
        self._keep(batch, maybe_applied=True)
        self._end(Ending.FAILED, Failure(RedisRefused(f"Redis refused: {message}")))

    # -- refusals

    def _keep(self, batch: _Batch, *, maybe_applied: bool) -> None:
        """``batch`` ends unconfirmed: out of flight, still owed (the spill)."""
        if batch in self._in_flight:
            self._in_flight.remove(batch)
        batch.maybe_applied = maybe_applied
        self._kept.append(batch)
        self._after_answer()

    def _hold(self, batch: _Batch, refusal: str) -> None:
        """A refusal that can pass: keep every batch, pause, retry the first."""
        batch.held = True
        now = self._clock.seconds()
        if self.waiting is None:
            self._waiting_since = now
            self._retry_delay = RETRY_FIRST
            log.warn(
                "tidehunter: Redis refused a batch ({refusal}); the stream "
                "waits with {owed} records held and retries until Redis "
                "accepts them",
                tidehunter_event="redis_waiting",
                refusal=refusal,
                owed=self._backlog,
            )
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self.waiting = f"Redis refuses: {refusal}"
        self._retrying = None
        self._retry_call = self._clock.callLater(self._retry_delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        held = [batch for batch in self._in_flight if batch.held]
        if not held or self._closing:
            return
        first = min(held, key=lambda batch: batch.seq)
        first.held = False
        self._retrying = first
        self._send(first)

    def _accepted_again(self) -> None:
        """The retried batch went in: send the held ones after it, in order."""
        log.info(
            "tidehunter: Redis accepts batches again after {seconds:.1f} s",
            tidehunter_event="redis_accepting",
            seconds=self._clock.seconds() - self._waiting_since,
        )
        self.waiting = None
        self._retrying = None
        for batch in sorted(self._in_flight, key=lambda batch: batch.seq):
            if batch.held:
                batch.held = False
                self._send(batch)

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _counter_lost(self, batch: _Batch) -> None:
        """The script found no counter hash: nothing applied, the run fails."""
        first = not self._refused
        self._refused = True
        self._keep(batch, maybe_applied=False)
        shared = self._shared_counter
        if first and shared is not None:
            shared.vanished()

    def _settle(self, batch: _Batch) -> None:
        """``batch`` has its answer: it is no longer in flight."""
        if self._in_flight and self._in_flight[0] is batch:
            self._in_flight.popleft()
        elif batch in self._in_flight:
            self._in_flight.remove(batch)
        else:
            return
        self._backlog -= len(batch.records)

    def _after_answer(self) -> None:
        if not self._in_flight and (not self._queued or self._refused):
            idle, self._idle = self._idle, []
            for waiting in idle:
                waiting.callback(None)
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self._on_drain is None:
            return
        if not self.full:
            callback, self._on_drain = self._on_drain, None
            callback()
        elif self.local is not None and self.local.full:
            # Answers filled the local sink: wait for it, not for Redis.
            self.local.set_drain_callback(self._maybe_drained)


def _each(
    records: list[bytes],
    position: bytes | None,
    positions: list[bytes | None] | None,
) -> list[bytes | None]:
    """The position after each record, where only the last may be known."""
    if positions is not None:
        return positions
    return [None] * (len(records) - 1) + [position]


def _one_line(failure: Failure) -> str:
    return " ".join(failure.getErrorMessage().split())


def counter_key(counter: RedisStateCounter | StateCounter) -> str:
    """The Redis key a counter lives at (a local counter has none)."""
    return counter.key if isinstance(counter, RedisStateCounter) else ""
