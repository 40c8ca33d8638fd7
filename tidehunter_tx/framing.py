"""Sans-IO framers: bytes in, records out.

A framer never touches a socket, a clock or a queue, so every way of cutting the
same bytes into chunks can be tested without a reactor (the h11 habit).  A record
is ``bytes``: the payload without its terminator.  Keep-alives are counted, never
emitted; records longer than ``max_record_bytes`` are skipped and counted without
the framer ever holding more than that many bytes of them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FRAMINGS",
    "RECORD_FORMATS",
    "Framer",
    "FramingError",
    "JsonRecords",
    "LengthFramer",
    "LineFramer",
    "SSEEvent",
    "SSEFramer",
    "make_framer",
]

DEFAULT_MAX_RECORD_BYTES = 1 << 20


class FramingError(ValueError):
    """The bytes cannot be framed: the connection can no longer be trusted.

    ``records`` holds the records the failing chunk completed before the bad
    bytes, so a caller may still deliver them before it reconnects.
    """

    def __init__(self, message: str, records: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.records: list[bytes] = records if records is not None else []


def _checked_max(max_record_bytes: int) -> int:
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be >= 1, not {max_record_bytes}")
    return max_record_bytes


class Framer(Protocol):
    """What the body protocol needs from any framer."""

    keepalives: int
    skipped: int

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk of the body; return the records it completes."""

    def close(self) -> bytes:
        """The stream ended: return the unfinished tail (never a record)."""

    @property
    def position(self) -> bytes | None:
        """Where the stream stands after the records fed so far, if it says.

        The resume position a reconnect or a restarted run starts from (an
        event stream's last event id); ``None`` for formats that carry none.
        """

    @property
    def retry_ms(self) -> int | None:
        """The reconnect delay the stream asked for, if it can ask."""

    @property
    def record_positions(self) -> list[bytes | None] | None:
        """The position after each record of the last :meth:`feed`, if known.

        ``None`` when the only position known is :attr:`position` (after the
        whole chunk).  A run that ends at its limit in mid-chunk stores the
        position of its last record from here.
        """

    def resume_from(self, position: bytes | None) -> None:
        """Start as if the record at ``position`` had just been delivered."""


class _NoPosition:
    """For formats that carry no resume position and no retry hint."""

    __slots__ = ()

    @property
    def position(self) -> bytes | None:
        return None

    @property
    def retry_ms(self) -> int | None:
        return None

    @property
    def record_positions(self) -> list[bytes | None] | None:
        return None

    def resume_from(self, position: bytes | None) -> None:
        """Nothing to resume: the format has no positions."""


class LineFramer(_NoPosition):
    """Newline-delimited records (JSON lines), ``\\n`` or ``\\r\\n``.

    The cost is linear in the bytes fed: a partial record grows a ``bytearray``
    (amortised appends) and only the new chunk is searched for a newline, so a
    huge line arriving in small pieces never rescans what came before.  Whole
    lines inside one chunk are cut with C-level ``split``; Python code runs per
    chunk, not per record, unless a chunk holds keep-alives or oversize lines.
    """

    __slots__ = ("_max", "_partial", "_skipping", "keepalives", "skipped")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._max = _checked_max(max_record_bytes)
        self._partial = bytearray()
        # True while discarding the rest of an oversize record up to its newline.
        self._skipping = False
        self.keepalives = 0
        self.skipped = 0

    @property
    def max_record_bytes(self) -> int:
        return self._max

    def feed(self, data: bytes) -> list[bytes]:
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(data)
            return []
        if self._partial or self._skipping:
            # The first line finishes a record that began in an earlier chunk.
            first = data.find(b"\n")
            records: list[bytes] = []
            if self._skipping:
                self._skipping = False
            else:
                self._partial += data[:first]
                self._finish_one(bytes(self._partial), records)
                self._partial.clear()
            if first < last:
                records.extend(self._split_complete(data[first + 1 : last]))
        else:
            records = self._split_complete(data[:last])
        self._hold(data[last + 1 :])
        return records

    def close(self) -> bytes:
        tail = bytes(self._partial)
        self._partial.clear()
        self._skipping = False
        return tail

    def _finish_one(self, line: bytes, records: list[bytes]) -> None:
        """Complete a record whose start came in earlier chunks."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self.keepalives += 1
        elif len(line) > self._max:
            self.skipped += 1
        else:
            records.append(line)

    def _split_complete(self, block: bytes) -> list[bytes]:
        """Split a run of whole lines (``block`` lacks only its final newline)."""
        if b"\r" in block:
            lines = block.replace(b"\r\n", b"\n").split(b"\n")
            if lines[-1].endswith(b"\r"):
                # The block was cut just before its final newline.
                lines[-1] = lines[-1][:-1]
        else:
            lines = block.split(b"\n")
        blanks = lines.count(b"")
        if blanks:
            self.keepalives += blanks
            lines = [line for line in lines if line]
        # No line in a block this short can be oversize: skip the scan.
        if len(block) > self._max:
            limit = self._max
            kept = [line for line in lines if len(line) <= limit]
            self.skipped += len(lines) - len(kept)
            lines = kept
        return lines

    def _hold(self, tail: bytes) -> None:
        """Keep an unfinished record, or drop it once it is known to be oversize."""
        if not tail or self._skipping:
            return
        # One byte of slack: a record of exactly max bytes may be followed by \r.
        if len(self._partial) + len(tail) > self._max + 1:
            self._partial.clear()
            self._skipping = True
            self.skipped += 1
        else:
            self._partial += tail


# -- server-sent events -------------------------------------------------------

_BOM = b"\xef\xbb\xbf"

# Room for the field name of a line ("data: ", "event: ", "id: ") and for modest
# ids and event types when max_record_bytes is tiny: a line longer than
# max_record_bytes + _LINE_SLACK is never held.
_LINE_SLACK = 4096

# Stand-ins for lines too long to hold.  A real line never contains CR or LF, so
# none of these can come from the stream; the parse loop reads each one as a field
# name it does not know, and only the rare unknown-field branch looks at them.
_OVERLONG_DATA = b"\n"  # a data line: the event's data is too big
_OVERLONG_FIELD = b"\r"  # an event or id line: the event is skipped if it has data
_IGNORED = b"\r\n"  # a line the spec ignores anyway (unknown field, retry)
_COMMENT = b":"  # an overlong comment is still just a comment


def _overlong(line: bytes) -> bytes:
    """The stand-in for a line too long to hold, from its first bytes."""
    head = line[:6]
    if head[:1] == b":":
        return _COMMENT
    colon = head.find(b":")
    name = head[:colon] if colon >= 0 else head
    if name == b"data":
        return _OVERLONG_DATA
    if name == b"event" or name == b"id":
        return _OVERLONG_FIELD
    return _IGNORED


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event.

    ``id`` is the event source's last event ID when the event was dispatched
    (it persists across events, as in the browser's ``MessageEvent.lastEventId``);
    ``None`` until the stream has set one, ``b""`` once the server has reset it.
    """

    data: bytes
    event: bytes = b"message"
    id: bytes | None = None


class SSEFramer:
    """Server-sent events (the WHATWG "event stream" interpretation).

    Lines end with CRLF, LF or CR (a CR ending one chunk and an LF starting the
    next are one line end); one UTF-8 BOM at the start of a stream is skipped;
    ``:`` lines are comments (counted as keep-alives); ``data``, ``event``, ``id``
    and ``retry`` fields build the event and a blank line dispatches it, unless
    its data buffer is empty.  A record is the event's data (bytes, exactly as
    sent: no UTF-8 decoding).  ``feed_events`` returns :class:`SSEEvent` objects
    with the event type and last event ID instead.

    ``last_event_id`` and ``retry_ms`` survive :meth:`close`, for the reconnect's
    ``Last-Event-ID`` header and delay.  An event whose data is longer than
    ``max_record_bytes`` is skipped and counted; so is one with an ``event`` or
    ``id`` line longer than ``max_record_bytes + 4096`` bytes (such an id is not
    applied).  Neither is ever held: the framer keeps at most
    ``max_record_bytes + 1`` bytes of an event's data and one partial line.

    Each chunk is cut with C-level ``splitlines``; Python work is per line (the
    field dispatch), never per byte, and a line or event arriving in small pieces
    grows a ``bytearray``, so the cost is linear in the bytes fed.
    """

    __slots__ = (
        "_carry",
        "_cr",
        "_dropped",
        "_event",
        "_head",
        "_id",
        "_line_max",
        "_max",
        "_oversize",
        "_partial",
        "_skipping",
        "keepalives",
        "last_event_id",
        "retry_ms",
        "skipped",
    )

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._max = _checked_max(max_record_bytes)
        self._line_max = max_record_bytes + _LINE_SLACK
        self.keepalives = 0
        self.skipped = 0
        # The spec's "last event ID string": set when an event is dispatched.
        self.last_event_id: bytes | None = None
        # The last valid ``retry`` field, in milliseconds.
        self.retry_ms: int | None = None
        # Bytes held while a BOM at the start is undecided; None once decided.
        self._head: bytes | None = b""
        # The previous chunk ended with CR: an LF starting this one ends nothing.
        self._cr = False
        # The start of a line whose end has not arrived.
        self._partial = bytearray()
        # True while discarding the rest of a line too long to hold.
        self._skipping = False
        # The open event's data from earlier chunks, as the spec's data buffer
        # (each data value followed by LF); at most max_record_bytes + 1 bytes.
        self._carry = bytearray()
        self._event = b""  # the event type buffer
        self._id: bytes | None = None  # the last event ID buffer
        self._oversize = False  # an overlong event/id line: skip the event
        self._dropped = False  # the open event had data, dropped as too big

    @property
    def max_record_bytes(self) -> int:
        return self._max

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk; return the data of each event it dispatches."""
        out: list[bytes] = []
        self._feed(data, out, False)
        return out

    def feed_events(self, data: bytes) -> list[SSEEvent]:
        """Like :meth:`feed`, with the event type and last event ID of each."""
        out: list[SSEEvent] = []
        self._feed(data, out, True)
        return out

    @property
    def position(self) -> bytes | None:
        """The last event id: the resume position of an event stream."""
        return self.last_event_id

    @property
    def record_positions(self) -> list[bytes | None] | None:
        """Per-event ids are in :meth:`feed_events`; ``position`` is after all."""
        return None

    def resume_from(self, last_event_id: bytes | None) -> None:
        """Start as if the event with this id had just been delivered.

        A restarted daemon reads the id a previous run stored and asks the
        server to go on from there (``Last-Event-ID``).
        """
        self.last_event_id = last_event_id
        self._id = last_event_id

    def close(self) -> bytes:
        """The stream ended: forget the unfinished event and line, return them.

        The tail is the open event's data buffer followed by the raw bytes of an
        unterminated last line (empty when nothing was lost).  The next stream
        starts clean (a BOM at its start is skipped again), but ``last_event_id``
        and ``retry_ms`` are kept, and an ``id`` of the unfinished event is not
        applied: it was never dispatched.
        """
        tail = (self._head or b"") + bytes(self._carry) + bytes(self._partial)
        self._head = b""
        self._cr = False
        self._partial.clear()
        self._skipping = False
        self._carry.clear()
        self._event = b""
        self._id = self.last_event_id
        self._oversize = False
        self._dropped = False
        return tail

    def _feed(self, data: bytes, out: list[Any], events: bool) -> None:
        if self._head is not None:
            data = self._head + data
            if len(data) < 3 and _BOM.startswith(data):
                self._head = data
                return
            self._head = None
            if data.startswith(_BOM):
                data = data[3:]
        if not data:
            return
        if self._cr:
            self._cr = False
            if data[0] == 10:
                data = data[1:]
                if not data:
                    return
        lines = data.splitlines()
        end = data[-1]
        if end == 10 or end == 13:
            tail = b""
            self._cr = end == 13
        else:
            tail = lines.pop()
        if lines:
            held = len(self._partial)
            if self._skipping:
                self._skipping = False
                lines[0] = _IGNORED
            elif held:
                lines[0] = bytes(self._partial) + lines[0]
                self._partial.clear()
            # No line of a chunk this short can be overlong: skip the scan.
            if len(data) + held > self._line_max:
                limit = self._line_max
                lines = [
                    line if len(line) <= limit else _overlong(line) for line in lines
                ]
            self._parse(lines, out, events)
        if tail:
            self._hold(tail)

    def _parse(self, lines: list[bytes], out: list[Any], events: bool) -> None:
        """Run the spec's line interpretation over whole lines."""
        limit = self._max
        keepalives = 0
        skipped = 0
        values: list[bytes] = []  # the open event's data values from this chunk
        carry = self._carry
        event = self._event
        id_buffer = self._id
        last_id = self.last_event_id
        oversize = self._oversize
        dropped = self._dropped
        # Anything unusual about the open event: data held from earlier chunks,
        # or a reason to skip it.  One test per event keeps the common path short.
        slow = bool(carry) or oversize or dropped
        for line in lines:
            if not line:
                # Dispatch.  The last event ID is set even if nothing is fired.
                last_id = id_buffer
                event_type = event
                event = b""
                if slow:
                    slow = False
                    if oversize or dropped:
                        if values or carry or dropped:
                            skipped += 1
                        values = []
                        carry.clear()
                        oversize = dropped = False
                        continue
                    # Data from earlier chunks (without its final LF) comes first.
                    values.insert(0, bytes(carry[:-1]))
                    carry.clear()
                if values:
                    record = b"\n".join(values)
                    values = []
                    if len(record) > limit:
                        skipped += 1
                    elif events:
                        out.append(SSEEvent(record, event_type or b"message", last_id))
                    else:
                        out.append(record)
                continue
            # The usual spellings first, then the general field rule.
            head = line[:6]
            if head == b"data: ":
                values.append(line[6:])
                continue
            if head[:4] == b"id: ":
                value = line[4:]
                if b"\0" not in value:
                    id_buffer = value
                continue
            name, _, value = line.partition(b":")
            if value and value[0] == 32:
                value = value[1:]
            if name == b"data":
                values.append(value)
            elif name == b"id":
                if b"\0" not in value:
                    id_buffer = value
            elif name == b"event":
                event = value
            elif name == b"retry":
                if value.isdigit():
                    digits = value.lstrip(b"0")
                    # Beyond Python's int-parsing limit: absurd, ignored.
                    if len(digits) <= 4000:
                        self.retry_ms = int(digits or b"0")
            elif not name:
                keepalives += 1  # a comment: the line starts with ':'
            elif name == _OVERLONG_DATA:
                dropped = slow = True
            elif name == _OVERLONG_FIELD:
                oversize = slow = True
        if values or carry:
            # The event stays open: keep its data, unless it is already doomed.
            if oversize or dropped:
                dropped = True
                carry.clear()
            elif values:
                carry += b"\n".join(values)
                carry += b"\n"
                if len(carry) > limit + 1:
                    dropped = True
                    carry.clear()
        self._event = event
        self._id = id_buffer
        self.last_event_id = last_id
        self._oversize = oversize
        self._dropped = dropped
        self.keepalives += keepalives
        self.skipped += skipped

    def _hold(self, tail: bytes) -> None:
        """Keep the start of an unfinished line, unless it is too long to keep."""
        if self._skipping:
            return
        partial = self._partial
        size = len(partial) + len(tail)
        head = (bytes(partial[:6]) + tail[:6])[:6]
        if size > self._line_max:
            stand_in = _overlong(head)
        elif head[:5] == b"data:" and (
            self._oversize
            or self._dropped
            # The data value is at least size - 6 bytes: the event is too big.
            or len(self._carry) + size > self._max + 6
        ):
            stand_in = _OVERLONG_DATA
        else:
            partial += tail
            return
        partial.clear()
        self._skipping = True
        self._parse([stand_in], [], False)


# -- length-prefixed records (Twitter's delimited=length) --------------------

# A length line longer than this (without its line end) is not a length.
_MAX_LENGTH_LINE = 20


class LengthFramer(_NoPosition):
    """Length-prefixed records: Twitter's ``delimited=length``.

    Each record is preceded by a line holding its length in bytes as ASCII
    decimal digits (surrounding whitespace allowed; ``\\r\\n`` or ``\\n`` ends
    it), then exactly that many bytes of payload; the record is the payload
    without one trailing ``\\r\\n`` or ``\\n``.  Blank lines between records,
    and payloads that are empty once stripped, are keep-alives.  A length line
    that is not a number, or longer than 20 bytes (without its line end), raises
    :class:`FramingError`; the framer then stays broken (every ``feed`` raises)
    until :meth:`close`.

    A record longer than ``max_record_bytes`` is skipped and counted; a payload
    longer than ``max_record_bytes + 2`` is counted down as it arrives, never
    held.  A payload arriving in pieces grows a ``bytearray``, so the cost is
    linear in the bytes fed; Python work is per record, not per byte.
    """

    __slots__ = (
        "_broken",
        "_line",
        "_max",
        "_need",
        "_payload",
        "_skip",
        "keepalives",
        "skipped",
    )

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._max = _checked_max(max_record_bytes)
        self._line = bytearray()  # the start of a length line
        self._payload = bytearray()  # the start of a payload
        self._need = 0  # payload bytes still to come
        self._skip = 0  # bytes of an oversize payload still to discard
        self._broken: str | None = None  # the message of a framing error
        self.keepalives = 0
        self.skipped = 0

    @property
    def max_record_bytes(self) -> int:
        return self._max

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken is not None:
            raise FramingError(self._broken)
        records: list[bytes] = []
        size = len(data)
        pos = 0
        if self._skip:
            pos = min(self._skip, size)
            self._skip -= pos
        elif self._need:
            pos = min(self._need, size)
            self._payload += memoryview(data)[:pos]
            self._need -= pos
            if not self._need:
                self._finish(bytes(self._payload), records)
                self._payload.clear()
        elif self._line:
            newline = data.find(b"\n")
            if newline < 0:
                self._hold_line(data, records)
                return records
            line = bytes(self._line) + data[:newline]
            self._line.clear()
            if line.endswith(b"\r"):
                line = line[:-1]
            pos = self._start_payload(line, data, newline + 1, records)
        limit = self._max
        find = data.find
        while pos < size:
            newline = find(b"\n", pos)
            if newline < 0:
                self._hold_line(data[pos:], records)
                break
            start = newline + 1
            if newline > pos and data[newline - 1] == 13:
                newline -= 1
            line = data[pos:newline]
            if line.isdigit() and len(line) <= _MAX_LENGTH_LINE:
                length = int(line)
                end = start + length
                if length <= limit + 2 and end <= size:
                    # The whole payload is in this chunk: the hot path.
                    stop = end
                    if length and data[stop - 1] == 10:
                        stop -= 1
                        if stop > start and data[stop - 1] == 13:
                            stop -= 1
                    if stop == start:
                        self.keepalives += 1
                    elif stop - start > limit:
                        self.skipped += 1
                    else:
                        records.append(data[start:stop])
                    pos = end
                    continue
            pos = self._start_payload(line, data, start, records)
        return records

    def close(self) -> bytes:
        """The stream ended: return the unfinished length line or payload."""
        tail = bytes(self._line) + bytes(self._payload)
        self._line.clear()
        self._payload.clear()
        self._need = 0
        self._skip = 0
        self._broken = None
        return tail

    def _start_payload(
        self, line: bytes, data: bytes, start: int, records: list[bytes]
    ) -> int:
        """Act on a length line (without its line end); return where to go on."""
        stripped = line.strip()
        if len(line) > _MAX_LENGTH_LINE or not (stripped.isdigit() or not stripped):
            self._fail(line, records)
        if not stripped:
            self.keepalives += 1
            return start
        length = int(stripped)
        available = len(data) - start
        if length > self._max + 2:
            # Too big whatever its line end: count it down, never hold it.
            self.skipped += 1
            if length > available:
                self._skip = length - available
                return len(data)
            return start + length
        if length > available:
            self._payload += memoryview(data)[start:]
            self._need = length - available
            return len(data)
        self._finish(data[start : start + length], records)
        return start + length

    def _finish(self, payload: bytes, records: list[bytes]) -> None:
        if payload.endswith(b"\n"):
            payload = payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
        if not payload:
            self.keepalives += 1
        elif len(payload) > self._max:
            self.skipped += 1
        else:
            records.append(payload)

    def _hold_line(self, tail: bytes, records: list[bytes]) -> None:
        """Keep the start of a length line; one this long is never a length."""
        # One byte more than the limit: a line of 20 may be followed by \r.
        if len(self._line) + len(tail) > _MAX_LENGTH_LINE + 1:
            self._fail(bytes(self._line) + tail[:40], records)
        self._line += tail

    def _fail(self, line: bytes, records: list[bytes]) -> NoReturn:
        excerpt = line[:32]
        more = "..." if len(line) > 32 else ""
        self._broken = (
            f"bad length line {excerpt!r}{more}: expected a byte count in ASCII "
            f"decimal digits on a line of at most {_MAX_LENGTH_LINE} bytes"
        )
        self._line.clear()
        raise FramingError(self._broken, records)


FRAMINGS = ("lines", "sse", "length")

#: How a record is written: as it came (``lines``), or as a JSON object.
RECORD_FORMATS = ("lines", "json")


class JsonRecords:
    """Another framer's records, each as one JSON object: lossless, one line.

    ``{"data": TEXT}``, or ``{"data_base64": ...}`` for bytes that are not
    UTF-8; an event stream's records also carry ``event`` (when it is not the
    default ``message``) and ``id`` (when the stream has one).  Counts,
    position and retry hint are the wrapped framer's.
    """

    __slots__ = ("_framer",)

    def __init__(self, framer: Framer) -> None:
        self._framer = framer

    @property
    def keepalives(self) -> int:
        return self._framer.keepalives

    @keepalives.setter
    def keepalives(self, value: int) -> None:
        self._framer.keepalives = value

    @property
    def skipped(self) -> int:
        return self._framer.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._framer.skipped = value

    def feed(self, data: bytes) -> list[bytes]:
        framer = self._framer
        try:
            if isinstance(framer, SSEFramer):
                return [_json_event(event) for event in framer.feed_events(data)]
            return [_json_record({}, record) for record in framer.feed(data)]
        except FramingError as error:
            error.records = [_json_record({}, record) for record in error.records]
            raise

    def close(self) -> bytes:
        return self._framer.close()

    @property
    def position(self) -> bytes | None:
        return self._framer.position

    @property
    def retry_ms(self) -> int | None:
        return self._framer.retry_ms

    @property
    def record_positions(self) -> list[bytes | None] | None:
        return self._framer.record_positions

    def resume_from(self, position: bytes | None) -> None:
        self._framer.resume_from(position)


def _json_event(event: SSEEvent) -> bytes:
    fields: dict[str, str] = {}
    if event.event != b"message":
        fields["event"] = event.event.decode("utf-8", "replace")
    if event.id is not None:
        fields["id"] = event.id.decode("utf-8", "replace")
    return _json_record(fields, event.data)


def _json_record(fields: dict[str, str], record: bytes) -> bytes:
    try:
        fields["data"] = record.decode("utf-8")
    except UnicodeDecodeError:
        fields["data_base64"] = base64.b64encode(record).decode("ascii")
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def make_framer(
    framing: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Framer:
    """Build the framer named by ``--framing``."""
    if framing == "lines":
        return LineFramer(max_record_bytes)
    if framing == "sse":
        return SSEFramer(max_record_bytes)
    if framing == "length":
        return LengthFramer(max_record_bytes)
    raise ValueError(
        f"unknown framing {framing!r}; expected one of: {', '.join(FRAMINGS)}"
    )
