"""Sinks: where admitted records go, and how they tell the stream to wait.

A sink accepts every record it is given (admitted records are already counted,
so a sink may never refuse or drop one) and reports ``full`` when the producer
should pause the HTTP transport; it calls its drain callback once it has room
again.  That pair is the whole backpressure contract between a sink and the
body protocol.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, Protocol, TypeVar

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredQueue, QueueOverflow, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.fdesc import setNonBlocking, writeToFD
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._reactor import or_global_reactor

__all__ = [
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_QUEUE_BUDGET_BYTES",
    "FileSink",
    "FileState",
    "PipeClosed",
    "PipeSink",
    "QueueSink",
    "RecordQueue",
    "Sink",
    "StateFileError",
]

_T = TypeVar("_T")

DEFAULT_HIGH_WATERMARK = 10_000
#: How many bytes of records a run with a limit may queue before pausing.
DEFAULT_QUEUE_BUDGET_BYTES = 256 * 2**20

log = Logger()

DrainCallback = Callable[[], None]


class Sink(Protocol):
    """What the body protocol needs from a sink."""

    @property
    def full(self) -> bool:
        """True when the stream should pause until the drain callback runs."""

    def put(self, records: list[bytes]) -> None:
        """Take admitted records; never refuse or drop one."""

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        """Call ``callback`` (once) when a full sink has room again."""

    def close(self) -> Deferred[None] | None:
        """Flush and release what the sink holds; a Deferred if that takes time."""


class RecordQueue(DeferredQueue[_T]):
    """A ``DeferredQueue`` built for streams of many small records.

    Twisted's ``DeferredQueue`` keeps ``pending`` in a list and ``get()`` pops its
    head, so draining a queue of n records costs O(n**2); here ``pending`` and
    ``waiting`` are deques.  ``extend`` takes a batch in one call.  ``get()``
    reports the queue shrinking to a listener so a paused stream resumes as soon
    as the consumer catches up; a consumer that takes from ``pending`` itself
    calls :meth:`check_low` (the sink also looks while the stream is paused).
    :meth:`wait_for_records` lets a bulk reader sleep until records arrive
    without taking one through a Deferred.
    """

    pending: deque[_T]  # type: ignore[assignment]
    waiting: deque[Deferred[_T]]  # type: ignore[assignment]

    def __init__(self, size: int | None = None, backlog: int | None = None) -> None:
        super().__init__(size, backlog)
        self.pending = deque()
        self.waiting = deque()
        self._low_watermark = -1
        self._on_low: DrainCallback | None = None
        self._readers: list[Deferred[None]] = []

    def put(self, obj: _T) -> None:
        if self.waiting:
            self.waiting.popleft().callback(obj)
        elif self.size is None or len(self.pending) < self.size:
            self.pending.append(obj)
        else:
            raise QueueOverflow()
        if self._readers:
            self.wake_readers()

    def extend(self, objs: Iterable[_T]) -> None:
        """Put many objects at once, in order (an unsized queue only)."""
        if self.size is not None:
            for obj in objs:
                self.put(obj)
            return
        pending = self.pending
        pending.extend(objs)
        waiting = self.waiting
        # Serve waiting getters from the head; a getter's callback may itself
        # take more records synchronously, which is the fast path for consumers.
        while waiting and pending:
            waiting.popleft().callback(pending.popleft())
        if self._readers:
            self.wake_readers()

    def wait_for_records(self) -> Deferred[None]:
        """Fires (with None, taking nothing) when records are next put."""
        waiting: Deferred[None] = Deferred()
        self._readers.append(waiting)
        return waiting

    def wake_readers(self) -> None:
        """Fire every :meth:`wait_for_records` Deferred (records came, or the end)."""
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.callback(None)

    def check_low(self) -> None:
        """Resume a waiting stream if ``pending`` was drained other than by get()."""
        if self._on_low is not None and len(self.pending) <= self._low_watermark:
            self._fire_low()

    def get(self) -> Deferred[_T]:
        pending = self.pending
        if pending:
            obj = pending.popleft()
            if self._on_low is not None and len(pending) <= self._low_watermark:
                self._fire_low()
            return succeed(obj)
        return super().get()

    def notify_when_low(self, low_watermark: int, callback: DrainCallback) -> None:
        """Call ``callback`` once, when ``get()`` leaves ``low_watermark`` or fewer."""
        self._low_watermark = low_watermark
        self._on_low = callback

    def cancel_notify(self) -> None:
        self._on_low = None
        self._low_watermark = -1

    def _fire_low(self) -> None:
        callback, self._on_low = self._on_low, None
        self._low_watermark = -1
        if callback is not None:
            callback()


class QueueSink:
    """Puts records into a ``DeferredQueue``; full above the high watermark.

    With a :class:`RecordQueue` the drain is reported by the queue itself when
    the consumer uses ``get()``; however else the queue is drained (records
    taken straight from ``pending``, any other ``DeferredQueue``), it is looked
    at every ``POLL_INTERVAL`` while the stream is paused, so a paused stream
    always resumes.  A queue with a ``size`` bound is honoured: what does not
    fit waits here (at most one chunk's worth, since the stream is paused) and
    moves in as the consumer makes room.

    :meth:`hold` lets a run with a limit queue up to that many records before
    pausing (a caller that drains only after ``tide_on`` fires would otherwise
    wait forever), up to ``budget_bytes`` of records; past the budget the
    stream pauses and a warning says to consume while the run is on.
    """

    POLL_INTERVAL = 0.02

    def __init__(
        self,
        queue: DeferredQueue[bytes],
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        low_watermark: int | None = None,
        reactor: IReactorTime | None = None,
        budget_bytes: int = DEFAULT_QUEUE_BUDGET_BYTES,
    ) -> None:
        if high_watermark < 1:
            raise ValueError(f"high_watermark must be >= 1, not {high_watermark}")
        if low_watermark is None:
            low_watermark = high_watermark // 4
        if not 0 <= low_watermark < high_watermark:
            raise ValueError(
                f"low_watermark must be in [0, {high_watermark}), not {low_watermark}"
            )
        if queue.size is not None:
            high_watermark = min(high_watermark, queue.size)
            low_watermark = min(low_watermark, high_watermark - 1)
        self.queue = queue
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.budget_bytes = budget_bytes
        self._overflow: deque[bytes] = deque()
        self._on_drain: DrainCallback | None = None
        self._poll: LoopingCall | None = None
        self._reactor = reactor
        self._fast = isinstance(queue, RecordQueue) and queue.size is None
        self._hold = 0
        self._held_bytes = 0
        self._held_records = 0
        self._warned = False

    def hold(self, records: int) -> None:
        """Queue up to ``records`` (a run's limit) before pausing; 0 = watermarks."""
        self._hold = records if records > self.high_watermark else 0
        self._held_bytes = self._held_records = 0
        self._warned = False

    @property
    def full(self) -> bool:
        if self._overflow:
            return True
        queued = len(self.queue.pending)
        if queued < self.high_watermark:
            return False
        if queued >= self._hold:
            return True
        # Within a limited run's reservation: only the memory budget pauses.
        average = self._held_bytes / max(self._held_records, 1)
        if queued * average < self.budget_bytes:
            return False
        if not self._warned:
            self._warned = True
            log.warn(
                "tidehunter: {queued} records (about {mib} MiB, the queue's budget) "
                "wait in the queue and the run is not over: the stream waits for a "
                "consumer. Take records while the run is on (async for ... in "
                "h.records() or h.batches()) or raise budget_bytes.",
                tidehunter_event="queue_full",
                queued=queued,
                mib=round(queued * average / 2**20),
            )
        return True

    def put(self, records: list[bytes]) -> None:
        if self._hold and len(self.queue.pending) >= self.high_watermark:
            # Measured only where the budget matters (past the watermark), and
            # exactly: a feed chooses its record sizes, an estimate would let
            # it pass the budget.
            self._held_bytes += sum(map(len, records))
            self._held_records += len(records)
        if self._fast:
            self.queue.extend(records)  # type: ignore[attr-defined]
            return
        if self._overflow:
            self._overflow.extend(records)
            return
        put = self.queue.put
        for index, record in enumerate(records):
            try:
                put(record)
            except QueueOverflow:
                # Admitted records are owed to the consumer: keep them and move
                # them in as room appears, even after the stream has stopped.
                self._overflow.extend(records[index:])
                self._start_polling()
                return

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        self._on_drain = callback
        queue = self.queue
        if callback is None:
            if not self._overflow:
                self._stop_polling()
            if isinstance(queue, RecordQueue):
                queue.cancel_notify()
            return
        if isinstance(queue, RecordQueue) and not self._overflow:
            queue.notify_when_low(self.low_watermark, self._drained)
        self._start_polling()

    def close(self) -> None:
        """Records stay in the queue for its consumer; only the polling ends."""
        self._on_drain = None
        if not self._overflow:
            self._stop_polling()

    def _drained(self) -> None:
        callback, self._on_drain = self._on_drain, None
        if isinstance(self.queue, RecordQueue):
            self.queue.cancel_notify()
        if not self._overflow:
            self._stop_polling()
        if callback is not None:
            callback()

    def _check(self) -> None:
        queue = self.queue
        overflow = self._overflow
        while overflow and (queue.size is None or len(queue.pending) < queue.size):
            queue.put(overflow.popleft())
        if overflow:
            return
        if self._on_drain is None:
            self._stop_polling()
        elif len(queue.pending) <= self.low_watermark:
            self._drained()

    def _start_polling(self) -> None:
        if self._poll is not None:
            return
        self._poll = LoopingCall(self._check)
        if self._reactor is not None:
            self._poll.clock = self._reactor
        self._poll.start(self.POLL_INTERVAL, now=False)

    def _stop_polling(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None and poll.running:
            poll.stop()


def as_lines(records: list[bytes]) -> bytes:
    """The records as lines, exactly one line each, whatever a record holds.

    JSON lines pass byte for byte.  A record holding a line break (a
    multi-line SSE ``data``, a length-framed payload) would read back as
    several: a JSON one is written with its line breaks as spaces (whitespace
    in JSON, so the same value), anything else as one JSON string.
    """
    data = b"\n".join(records) + b"\n"
    if data.count(b"\n") == len(records) and b"\r" not in data:
        return data  # the common case: two C-speed scans
    return b"".join(_one_line(record) + b"\n" for record in records)


def _one_line(record: bytes) -> bytes:
    if b"\n" not in record and b"\r" not in record:
        return record
    try:
        json.loads(record)
    except ValueError:
        text = record.decode("utf-8", "surrogateescape")
        return json.dumps(text).encode("ascii")
    return record.replace(b"\r\n", b" ").replace(b"\n", b" ").replace(b"\r", b" ")


class StateFileError(Exception):
    """A state file and its data file disagree, or the state file is unreadable."""


class FileSink:
    """Appends records to a binary file, one per line (see :func:`as_lines`).

    Writes go through the file object's buffer and are flushed once per batch,
    so a reader tailing the file sees whole batches; ``close()`` flushes and
    closes.  Local file writes do not block long enough to need backpressure,
    so this sink is never ``full``.

    Opened with a ``state_path``, the sink keeps the feed's resume position
    in a :class:`FileState` (``sink.state``) and first cuts the data file
    back to the length that state describes (dropping whatever a crash left
    after it: the feed sends those records again).
    """

    full = False

    def __init__(self, file: BinaryIO, state: FileState | None = None) -> None:
        self._file = file
        #: Bytes in the data file: what the state file's length is taken from.
        self.length = file.seek(0, os.SEEK_END)
        self.state = state
        if state is not None:
            state.attach(self)

    @classmethod
    def open(cls, path: str, state_path: str | None = None) -> FileSink:
        if state_path is None:
            return cls(open(path, "ab"))
        state = FileState(state_path)
        file = open(path, "ab")  # noqa: SIM115 - the sink owns it until close()
        try:
            state.cut_back(path, file)
        except BaseException:
            file.close()
            raise
        return cls(file, state)

    def put(self, records: list[bytes]) -> None:
        data = as_lines(records)
        self._file.write(data)
        self._file.flush()
        self.length += len(data)

    def sync(self) -> None:
        """What was put is on disk (before a state file may describe it)."""
        os.fsync(self._file.fileno())

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        """Never full, so never drained."""

    def close(self) -> None:
        if self._file.closed:
            return
        if self.state is not None:
            self.state.flush()
        self._file.close()


class FileState:
    """A file sink's resume position, in a state file beside the data.

    The state file holds the position and the data file's length at that
    position, as one JSON object.  It is replaced atomically (write, fsync,
    rename) after the data it describes is flushed and synced, at most every
    ``save_interval`` seconds (and when the sink closes): it may lag behind
    the data, never run ahead of it.  A restarted run cuts the data back to
    the saved length and resumes from the saved position, so every record is
    in the file exactly once, across a SIGKILL too.
    """

    def __init__(
        self,
        path: str,
        save_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.save_interval = save_interval
        self._clock = clock
        self._sink: FileSink | None = None
        self._saved_at = -float("inf")
        self._pending: tuple[bytes, int] | None = None
        self._loaded: bytes | None = None
        self.saves = 0

    def attach(self, sink: FileSink) -> None:
        self._sink = sink

    def read(self) -> tuple[bytes | None, int] | None:
        """The saved (position, length), or None when there is no state file."""
        try:
            with open(self.path, "rb") as file:
                raw = file.read(1 << 20)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StateFileError(
                f"cannot read the state file {self.path}: {error.strerror}"
            ) from None
        try:
            state = json.loads(raw)
            length = int(state["length"])
            if "position_base64" in state:
                position: bytes | None = base64.b64decode(state["position_base64"])
            elif state.get("position") is None:
                position = None
            else:
                position = str(state["position"]).encode("utf-8")
        except (ValueError, KeyError, TypeError) as error:
            raise StateFileError(
                f"the state file {self.path} is not one this program wrote"
                f" ({error}): move it away to start the feed from the beginning"
            ) from None
        return position, length

    def cut_back(self, data_path: str, file: BinaryIO) -> None:
        """Cut ``file`` back to the saved length; remember the saved position."""
        saved = self.read()
        size = file.seek(0, os.SEEK_END)
        if saved is None:
            if size:
                log.info(
                    "tidehunter: {path} holds {size} bytes but there is no state"
                    " file {state}: the feed starts from its beginning, appending",
                    tidehunter_event="state_missing",
                    path=data_path,
                    size=size,
                    state=self.path,
                )
            return
        position, length = saved
        if size < length:
            raise StateFileError(
                f"{data_path} holds {size} bytes but its state file {self.path}"
                f" describes {length}: the data was cut or replaced; move the"
                " state file away to start the feed from the beginning"
            )
        if size > length:
            os.truncate(file.fileno(), length)
            file.seek(0, os.SEEK_END)
            log.info(
                "tidehunter: cut {path} back to {length} bytes, the end of the"
                " last saved position ({extra} bytes after it, written before"
                " a crash, come again from the feed)",
                tidehunter_event="data_cut_back",
                path=data_path,
                length=length,
                extra=size - length,
            )
        self._loaded = position

    def load(self) -> bytes | None:
        return self._loaded

    def save(self, position: bytes | None) -> None:
        if position is None or self._sink is None:
            return
        self._pending = (position, self._sink.length)
        now = self._clock()
        if now - self._saved_at >= self.save_interval:
            self._saved_at = now
            self.flush()

    def flush(self) -> None:
        """Write the pending state now (the data first reaches the disk)."""
        pending, self._pending = self._pending, None
        if pending is None or self._sink is None:
            return
        position, length = pending
        self._sink.sync()
        state: dict[str, Any] = {"length": length}
        try:
            state["position"] = position.decode("utf-8")
        except UnicodeDecodeError:
            state["position_base64"] = base64.b64encode(position).decode("ascii")
        temporary = f"{self.path}.tmp"
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            os.write(fd, json.dumps(state).encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        self.saves += 1


def claim_stdout() -> int:
    """A private copy of standard output for records, and nothing else on it.

    The process's file descriptor 1 is pointed at standard error, so whatever
    else writes to "stdout" (twistd's log with ``-n``, a stray print) lands
    there; the records keep the original descriptor.
    """
    sys.stdout.flush()
    records_fd = os.dup(1)
    os.dup2(2, 1)
    return records_fd


class _FdWriter(FileDescriptor):
    """Non-blocking writes to a pipe or terminal, buffered by the reactor."""

    def __init__(
        self, fd: int, reactor: IReactorFDSet, lost: Callable[[Failure], None]
    ) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._lost = lost
        #: Lines the reader's end of the pipe took (each record is one line).
        self.lines_written = 0
        setNonBlocking(fd)
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def writeSomeData(self, data: bytes) -> Any:
        written = writeToFD(self._fd, data)
        if isinstance(written, int) and written > 0:
            self.lines_written += bytes(data[:written]).count(b"\n")
        return written

    def doRead(self) -> None:
        """Write-only."""

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._lost(reason)


class PipeClosed(Exception):
    """The reader of a pipe sink went away (EPIPE): nothing more reaches it."""

    def __init__(self, written: int, lost: int) -> None:
        self.written = written
        #: Records taken by the sink that never reached the reader.
        self.lost = lost
        super().__init__(
            f"the reader of the records closed the pipe after {written} "
            f"record{'' if written == 1 else 's'} written ({lost} taken after "
            "that never reached it)"
        )


@implementer(IPushProducer)
class PipeSink:
    """Records, one per line (see :func:`as_lines`), to a pipe such as stdout.

    A slow reader (``twistd ... | slow-program``) must not block the reactor,
    or control commands and SIGTERM would wait on it too: writes are buffered
    and the sink is ``full`` while the pipe is, which pauses the HTTP stream.
    """

    def __init__(
        self,
        fd: int,
        reactor: IReactorFDSet | None = None,
        *,
        on_broken: Callable[[Failure], None] | None = None,
    ) -> None:
        reactor = or_global_reactor(reactor)
        self.closed: Deferred[None] = Deferred()
        #: Why the reader can take no more (it closed the pipe), or None.
        self.broken: Failure | None = None
        #: Told once when the reader goes away mid-run (EPIPE): the run that
        #: writes here must end, or it would stream into nothing.
        self.on_broken = on_broken
        self._records_put = 0
        self._paused = False
        self._on_drain: DrainCallback | None = None
        self._writer = _FdWriter(fd, reactor, self._writer_lost)
        self._writer.registerProducer(self, True)

    @classmethod
    def stdout(cls, reactor: IReactorFDSet | None = None) -> PipeSink:
        return cls(claim_stdout(), reactor)

    @property
    def full(self) -> bool:
        return self._paused

    @property
    def written(self) -> int:
        """Records the reader's end of the pipe took."""
        return self._writer.lines_written

    def put(self, records: list[bytes]) -> None:
        self._records_put += len(records)
        if self.broken is None:
            self._writer.write(as_lines(records))

    def set_drain_callback(self, callback: DrainCallback | None) -> None:
        self._on_drain = callback

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        callback, self._on_drain = self._on_drain, None
        if callback is not None:
            callback()

    def stopProducing(self) -> None:
        """The reader went away; connectionLost says so."""

    def close(self) -> Deferred[None]:
        """Flush what is buffered, then close; fires when done."""
        if not self.closed.called:
            self._writer.unregisterProducer()
            self._writer.loseConnection()  # type: ignore[no-untyped-call]
        return self.closed

    def _writer_lost(self, reason: Failure) -> None:
        if not reason.check(ConnectionDone):
            written = self.written
            self.broken = Failure(PipeClosed(written, self._records_put - written))
        self._paused = False
        if not self.closed.called:
            self.closed.callback(None)
        if self.broken is not None and self.on_broken is not None:
            told, self.on_broken = self.on_broken, None
            told(self.broken)
