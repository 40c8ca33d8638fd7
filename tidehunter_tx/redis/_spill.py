"""The spill file: records Redis never confirmed, kept rather than dropped."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any, NamedTuple

__all__ = ["MAX_SPILL_NAMES", "Spilled", "write_spill"]

#: ``PATH``, then ``PATH.1`` ... ``PATH.99``: how many names a spill tries.
MAX_SPILL_NAMES = 100

_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
)


class Spilled(NamedTuple):
    """What a spill wrote: (sent, unsent) counts, and the file (None: nothing)."""

    sent: int
    unsent: int
    path: str | None


def write_spill(
    path: str,
    key: str,
    producer: str,
    batches: list[tuple[int | None, list[bytes]]],
) -> Spilled:
    """Write one JSON object per record to a new file, fsynced.

    The file is ``path`` or, when that name is taken, the first free
    ``path.N``: always created here (0600, never through a link), so records
    never land in a file someone planted or an earlier spill.

    ``batches`` are (seq, records) in the stream's order; a seq means the
    batch was sent and Redis may have applied it (its lines carry ``producer``
    and ``seq`` so a reader can tell), None that Redis surely holds none of it.
    """
    lines = [
        _line(key, record, producer, seq)
        for seq, records in batches
        for record in records
    ]
    sent_count = sum(len(records) for seq, records in batches if seq is not None)
    if not lines:
        return Spilled(0, 0, None)
    written, fd = _create(path)
    with os.fdopen(fd, "w", encoding="utf-8") as spill:
        spill.writelines(lines)
        spill.flush()
        os.fsync(spill.fileno())
    _sync_directory(written)
    return Spilled(sent_count, len(lines) - sent_count, written)


def _create(path: str) -> tuple[str, int]:
    """Create the first free name of ``path``, ``path.1``, ...; (name, fd)."""
    for n in range(MAX_SPILL_NAMES):
        name = path if n == 0 else f"{path}.{n}"
        try:
            return name, os.open(name, _CREATE, 0o600)
        except OSError as error:
            # Taken: a file, a link (ELOOP where O_NOFOLLOW wins), anything.
            if error.errno not in (errno.EEXIST, errno.ELOOP):
                raise
    raise FileExistsError(
        errno.EEXIST,
        f"{path} and {path}.1 to {path}.{MAX_SPILL_NAMES - 1} are all taken",
        path,
    )


def _sync_directory(path: str) -> None:
    """Make the new name durable too: the records are not lost in a crash."""
    with contextlib.suppress(OSError):  # a directory that cannot be fsynced
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _line(key: str, record: bytes, producer: str = "", seq: int | None = None) -> str:
    entry: dict[str, Any] = {
        "key": key,
        "data": record.decode("utf-8", "surrogateescape"),
        "sent": seq is not None,
    }
    if seq is not None:
        entry.update(producer=producer, seq=seq)
    return json.dumps(entry) + "\n"
