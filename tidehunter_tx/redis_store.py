"""Redis: the shared state counter and the sinks, with exact limits across hunters.

Layout (techies 0.2.0 compatible): the queue is a list at ``KEY`` (we
``RPUSH``, techies' ``Queue.get()`` pops the head); the state counter is a hash
with ``state`` ("1"/"0"), ``count`` (this run), ``total`` (earlier runs) and
our own ``limit``.  Admitting and pushing a batch is one Lua script, so any
number of hunters sharing the counter deliver exactly ``limit`` records, and a
push never switches a stopped counter back on.

Every batch carries (producer id, sequence number); the script remembers the
last few it applied per producer, so a batch re-sent after a lost connection is
applied exactly once, whatever happened to the first attempt.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .counter import CounterState
from .protocol import Ending
from .sinks import DrainCallback, Sink

__all__ = [
    "RedisGate",
    "RedisSpec",
    "RedisStateCounter",
    "connect",
    "parse_redis_spec",
]

log = Logger()

#: Records per script call: Lua's unpack() stops near 8,000 values.
MAX_BATCH = 4000
#: Script calls in flight per hunter before the HTTP stream pauses.
MAX_IN_FLIGHT = 4
#: Applied (seq, admitted) pairs remembered per producer for re-sent batches.
HISTORY = 32

ADMIT_AND_PUSH = """
local counter, target, seen = KEYS[1], KEYS[2], KEYS[3]
local producer, seq, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local maxlen = tonumber(ARGV[4])
local event_id = ARGV[5]
local fields = redis.call('HMGET', counter, 'state', 'count', 'limit')
local state = fields[1] or '0'
local count = tonumber(fields[2] or '0')
local limit = tonumber(fields[3] or '0')
local history = redis.call('HGET', seen, producer) or '0|'
local last, past = string.match(history, '^(%d+)|(.*)$')
if seq <= tonumber(last) then
  local replay = 0
  for s, a in string.gmatch(past, '(%d+):(%d+),') do
    if tonumber(s) == seq then replay = tonumber(a) end
  end
  return {replay, state, count, limit, 1}
end
local n = #ARGV - 5
local admitted = 0
if state == '1' then
  admitted = n
  if limit > 0 then admitted = math.max(0, math.min(n, limit - count)) end
  if admitted > 0 then
    if mode == 'list' then
      redis.call('RPUSH', target, unpack(ARGV, 6, 5 + admitted))
    elseif mode == 'stream' then
      for i = 6, 5 + admitted do
        if maxlen > 0 then
          redis.call('XADD', target, 'MAXLEN', '~', maxlen, '*', 'data', ARGV[i])
        else
          redis.call('XADD', target, '*', 'data', ARGV[i])
        end
      end
    end
    count = redis.call('HINCRBY', counter, 'count', admitted)
  end
  -- Where an event stream stands, stored with the push it belongs to, so a
  -- restarted hunter resumes exactly after the last event delivered.
  if event_id ~= '' and admitted == n then
    redis.call('HSET', counter, 'last_event_id', event_id)
  end
end
past = past .. seq .. ':' .. admitted .. ','
local keep = 0
for _ in string.gmatch(past, ',') do keep = keep + 1 end
while keep > HISTORY do
  past = string.gsub(past, '^[^,]*,', '', 1)
  keep = keep - 1
end
redis.call('HSET', seen, producer, seq .. '|' .. past)
redis.call('EXPIRE', seen, 86400)
return {admitted, state, count, limit, 0}
""".replace("HISTORY", str(HISTORY))

# techies semantics: a start or a stop moves count into total.  Joining a run
# that is already on leaves it alone, so hunters sharing a counter do not reset
# each other's count.
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '1' then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  redis.call('HINCRBY', KEYS[1], 'total', count)
  redis.call('HSET', KEYS[1], 'count', 0, 'state', 1)
end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'limit', ARGV[1]) end
return redis.call('HMGET', KEYS[1], 'state', 'count', 'total', 'limit', 'last_event_id')
"""

STOP = """
if redis.call('HGET', KEYS[1], 'state') == '1' then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  redis.call('HINCRBY', KEYS[1], 'total', count)
  redis.call('HSET', KEYS[1], 'count', 0)
end
redis.call('HSET', KEYS[1], 'state', 0)
return redis.call('HMGET', KEYS[1], 'state', 'count', 'total', 'limit')
"""


@dataclass(frozen=True)
class RedisSpec:
    """A parsed ``redis://[:PASSWORD@]HOST:PORT/DB?key=KEY[&maxlen=N]``."""

    host: str
    port: int
    db: int
    key: str
    password: str | None = None
    stream: bool = False
    maxlen: int = 0

    @property
    def public(self) -> str:
        """The spec without its password, for logs and status."""
        scheme = "redis+stream" if self.stream else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}?key={self.key}"


def parse_redis_spec(spec: str) -> RedisSpec:
    """Parse a ``--sink``/``--counter`` Redis spec; ValueError says what is wrong."""
    parts = urlsplit(spec)
    if parts.scheme not in ("redis", "redis+stream"):
        raise ValueError(f"not a redis:// spec: {spec.split('://')[0]!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    host = parts.hostname or "127.0.0.1"
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"database must be a number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    keys = query.get("key", [])
    if not keys or not keys[0]:
        raise ValueError("needs ?key=KEY (the Redis key to use)")
    maxlen = 0
    if "maxlen" in query:
        if parts.scheme != "redis+stream":
            raise ValueError("maxlen applies to redis+stream:// sinks only")
        text = query["maxlen"][0]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"maxlen must be a positive integer, not {text!r}")
        maxlen = int(text)
    unknown = set(query) - {"key", "maxlen"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
    password = unquote(parts.password) if parts.password else None
    return RedisSpec(
        host=host,
        port=port,
        db=int(path),
        key=keys[0],
        password=password,
        stream=parts.scheme == "redis+stream",
        maxlen=maxlen,
    )


def redis_password(spec: RedisSpec) -> str | None:
    """The password: from the spec, else ``TIDEHUNTER_REDIS_PASSWORD``.

    A password in a ``--sink``/``--counter`` spec is visible to every user
    through ``ps``; the environment variable keeps it off the command line.
    """
    return spec.password or os.environ.get("TIDEHUNTER_REDIS_PASSWORD") or None


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

    shared = True

    def __init__(
        self,
        connection: Any,
        key: str,
        *,
        poll_interval: float = 0.25,
        clock: Any = None,
    ) -> None:
        super().__init__()
        self.connection = connection
        self.key = key
        self.start_timeout = 15.0
        #: Where an event stream stood when its last batch was pushed.
        self.last_event_id: bytes | None = None
        self._poll = LoopingCall(self.refresh)
        if clock is not None:
            self._poll.clock = clock
        self._poll_interval = poll_interval
        self._watching = False

    def _limit_changed(self, value: int) -> None:
        """The limit lives in the hash, for every hunter sharing it."""
        self.connection.hset(self.key, "limit", value).addErrback(self._log_error)

    def start(self, limit: int | None = None) -> Deferred[None]:
        """Switch on (or join a run already on), then watch for a stop.

        Fails with a clear error when Redis does not answer in time (down, or
        refusing the password) rather than leaving the hunter waiting.
        """
        from twisted.internet import reactor

        if limit is not None:
            self._limit = limit
        arg = "" if limit is None else str(limit)
        d = self.connection.eval(START, keys=[self.key], args=[arg])
        d.addTimeout(self.start_timeout, reactor, onTimeoutCancel=self._no_answer)
        d.addCallback(self._update)
        d.addCallback(lambda _: self._watch())
        return d  # type: ignore[no-any-return]

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

    def admit(self, wanted: int) -> int:
        raise TypeError("a shared counter admits records in Redis: use its gate")

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
        if len(fields) > 4:
            self.last_event_id = fields[4]
        state, count, total, limit = (f if f is not None else b"0" for f in fields[:4])
        self.total = int(total)
        self.update(state, count, limit)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self._poll.start(self._poll_interval, now=False)

    def _log_error(self, failure: Failure) -> None:
        log.failure("tidehunter: Redis counter command failed", failure)

    def make_gate(self, local: Sink | None = None, **kwargs: Any) -> RedisGate:
        """A gate that admits through this counter into a local sink."""
        return RedisGate(self, local=local, **kwargs)


@dataclass
class _Batch:
    seq: int
    records: list[bytes]
    event_id: bytes | None = None


class RedisGate:
    """Admits batches through the shared counter and pushes them, in Redis.

    One script call per batch, up to ``max_in_flight`` at once (reading
    overlaps pushing); at the cap the sink is ``full`` and the stream pauses.
    While Redis is away, batches wait here (bounded, the stream is paused)
    and are re-sent in order when it returns; the script's per-producer
    sequence numbers make a re-sent batch count once.  With ``local`` set
    (a file or a queue) nothing is pushed to Redis: admitted records go to
    ``local`` in order, so the limit is exact across hunters whatever they
    write to.
    """

    admits = True

    def __init__(
        self,
        counter: RedisStateCounter,
        *,
        target: RedisSpec | None = None,
        local: Sink | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.counter = counter
        self.connection = counter.connection
        self.local = local
        self.mode = (
            "none" if target is None else ("stream" if target.stream else "list")
        )
        self.target_key = counter.key if target is None else target.key
        self.maxlen = 0 if target is None else target.maxlen
        self.seen_key = f"{counter.key}:producers"
        self.producer = uuid.uuid4().hex
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._seq = 0
        # Records wait here unnumbered: a batch takes its sequence number when
        # it is sent, so batches queued behind the cap merge into bigger ones.
        self._queued: deque[list[bytes]] = deque()
        # The event id after each queued record list (SSE streams only).
        self._queued_ids: deque[bytes | None] = deque()
        self._event_id_source: Callable[[], bytes | None] | None = None
        self._in_flight: deque[_Batch] = deque()
        self._on_drain: DrainCallback | None = None
        self._on_verdict: Callable[[Ending, Failure | None], None] | None = None
        self._on_admitted: Callable[[int], None] | None = None
        self._closing = False
        self._idle: list[Deferred[None]] = []
        #: Records read but never offered to Redis because the run was over.
        self.dropped = 0

    # -- the Sink side

    @property
    def full(self) -> bool:
        backlog = len(self._in_flight) + len(self._queued)
        return backlog >= self.max_in_flight or (
            self.local is not None and self.local.full
        )

    def put(self, records: list[bytes]) -> None:
        self.offer(records)

    def offer(self, records: list[bytes]) -> None:
        """Take framed records; Redis decides how many are admitted."""
        if self._closing or not records:
            return
        self._queued.append(records)
        source = self._event_id_source
        self._queued_ids.append(source() if source is not None else None)
        self._pump()

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        self._on_drain = callback
        if callback is not None and self.local is not None and self.local.full:
            self.local.set_drain_callback(self._maybe_drained)

    def set_verdict_callback(
        self, callback: Callable[[Ending, Failure | None], None] | None
    ) -> None:
        """Told when Redis says the run is over (limit, switched off, failure)."""
        self._on_verdict = callback

    def set_event_id_source(self, source: Callable[[], bytes | None] | None) -> None:
        """Where to read an event stream's last id when records are offered."""
        self._event_id_source = source

    def set_admitted_callback(self, callback: Callable[[int], None] | None) -> None:
        self._on_admitted = callback

    def drop_queued(self) -> int:
        """Forget batches not yet sent (after a stop they would not be admitted).

        Counted in ``dropped`` (and so in Status): never a silent loss.
        """
        dropped = sum(len(records) for records in self._queued)
        self._queued.clear()
        self._queued_ids.clear()
        self.dropped += dropped
        return dropped

    def settled(self) -> Deferred[None]:
        """Fires once every batch sent or queued has its answer."""
        if not self._in_flight and not self._queued:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._idle.append(waiting)
        return waiting

    def spill(self, path: str) -> tuple[int, int]:
        """Write every unconfirmed record to ``path`` (JSON lines); never drop.

        One object per record: ``data``, the ``key`` it was for, and whether it
        was ``sent`` (Redis may have applied it before the outage; ``producer``
        and ``seq`` identify its batch, which the admit-and-push script would
        recognise if re-sent) or never sent.  Returns (sent, unsent) counts.
        """
        lines = []
        for batch in self._in_flight:
            for record in batch.records:
                lines.append(self._spill_line(record, batch.seq))
        sent = len(lines)
        for queued in self._queued:
            for record in queued:
                lines.append(self._spill_line(record, None))
        if not lines:
            return 0, 0
        with open(path, "a", encoding="utf-8") as spill:
            spill.writelines(lines)
            spill.flush()
            os.fsync(spill.fileno())
        self._closing = True
        return sent, len(lines) - sent

    def _spill_line(self, record: bytes, seq: int | None) -> str:
        entry: dict[str, Any] = {
            "key": self.target_key,
            "data": record.decode("utf-8", "surrogateescape"),
            "sent": seq is not None,
        }
        if seq is not None:
            entry.update(producer=self.producer, seq=seq)
        return json.dumps(entry) + "\n"

    # -- talking to Redis

    def _pump(self) -> None:
        queued = self._queued
        ids = self._queued_ids
        while queued and len(self._in_flight) < self.max_in_flight:
            records, event_id = queued.popleft(), ids.popleft()
            while queued and len(records) + len(queued[0]) <= self.max_batch:
                records = records + queued.popleft()
                event_id = ids.popleft()
            if len(records) > self.max_batch:
                # The id belongs with the end of the list: it stays queued.
                queued.appendleft(records[self.max_batch :])
                ids.appendleft(event_id)
                records, event_id = records[: self.max_batch], None
            self._seq += 1
            batch = _Batch(self._seq, records, event_id)
            self._in_flight.append(batch)
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        head = [
            self.producer.encode(),
            b"%d" % batch.seq,
            self.mode.encode(),
            b"%d" % self.maxlen,
            batch.event_id or b"",
        ]
        payload = encode_eval(
            ADMIT_AND_PUSH_BYTES,
            [
                self.counter.key.encode(),
                self.target_key.encode(),
                self.seen_key.encode(),
            ],
            head,
            batch.records,
        )
        d = execute_encoded(self.connection, payload)
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _answered(self, reply: list[Any], batch: _Batch) -> None:
        admitted, state, count, limit, _replayed = reply
        admitted = int(admitted)
        if self._in_flight and self._in_flight[0] is batch:
            self._in_flight.popleft()
        elif batch in self._in_flight:
            self._in_flight.remove(batch)
        self.counter.update(state, count, limit)
        if admitted:
            if self.local is not None:
                self.local.put(batch.records[:admitted])
            if self._on_admitted is not None:
                self._on_admitted(admitted)
        over = admitted < len(batch.records) or self.counter.limit_reached
        if over or not self.counter.started:
            self.drop_queued()
            if self._on_verdict is not None:
                ending = Ending.LIMIT if self.counter.started else Ending.STOPPED
                self._on_verdict(ending, None)
        self._pump()
        self._after_answer()

    def _failed(self, failure: Failure, batch: _Batch) -> None:
        if failure.check(txredisapi.ConnectionError) and not self._closing:
            # Lost with the connection: maybe applied, maybe not.  Re-send it
            # (it waits for the reconnect); the sequence number makes it count
            # once.  Failures arrive in send order, so order is kept.
            self._send(batch)
            return
        if self._closing:
            return
        log.failure("tidehunter: Redis refused a batch", failure)
        if batch in self._in_flight:
            self._in_flight.remove(batch)
        if self._on_verdict is not None:
            self._on_verdict(Ending.FAILED, failure)
        self._after_answer()

    def _after_answer(self) -> None:
        if not self._in_flight and not self._queued:
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


ADMIT_AND_PUSH_BYTES = ADMIT_AND_PUSH.encode()


def encode_eval(
    script: bytes, keys: list[bytes], head: list[bytes], records: list[bytes]
) -> bytes:
    """One ``EVAL`` as RESP bytes, built in bulk.

    Encoding thousands of arguments one call at a time (as a client library
    does) costs more than the push itself; records need no conversion.
    """
    count = 3 + len(keys) + len(head) + len(records)
    parts = [b"*%d\r\n$4\r\nEVAL\r\n" % count]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in (script, b"%d" % len(keys))]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in keys]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in head]
    parts += [b"$%d\r\n%s\r\n" % (len(record), record) for record in records]
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
