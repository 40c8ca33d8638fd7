"""Sans-IO framers: bytes in, records out.

A framer never touches a socket, a clock or a queue, so every way of cutting the
same bytes into chunks can be tested without a reactor (the h11 habit).  A record
is ``bytes``: the payload without its terminator.  Keep-alives are counted, never
emitted; records longer than ``max_record_bytes`` are skipped and counted without
the framer ever holding more than that many bytes of them.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FRAMINGS",
    "Framer",
    "LineFramer",
    "make_framer",
]

DEFAULT_MAX_RECORD_BYTES = 1 << 20


class Framer(Protocol):
    """What the body protocol needs from any framer."""

    keepalives: int
    skipped: int

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk of the body; return the records it completes."""

    def close(self) -> bytes:
        """The stream ended: return the unfinished tail (never a record)."""


class LineFramer:
    """Newline-delimited records (JSON lines), ``\\n`` or ``\\r\\n``.

    The cost is linear in the bytes fed: a partial record grows a ``bytearray``
    (amortised appends) and only the new chunk is searched for a newline, so a
    huge line arriving in small pieces never rescans what came before.  Whole
    lines inside one chunk are cut with C-level ``split``; Python code runs per
    chunk, not per record, unless a chunk holds keep-alives or oversize lines.
    """

    __slots__ = ("_max", "_partial", "_skipping", "keepalives", "skipped")

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, not {max_record_bytes}")
        self._max = max_record_bytes
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


FRAMINGS = ("lines",)


def make_framer(
    framing: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Framer:
    """Build the framer named by ``--framing``."""
    if framing == "lines":
        return LineFramer(max_record_bytes)
    raise ValueError(
        f"unknown framing {framing!r}; expected one of: {', '.join(FRAMINGS)}"
    )
