"""The spill file: records Redis never confirmed, kept rather than dropped."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["write_spill"]


def write_spill(
    path: str,
    key: str,
    producer: str,
    batches: list[tuple[int | None, list[bytes]]],
) -> tuple[int, int]:
    """Append one JSON object per record to ``path``, fsynced; (sent, unsent).

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
    if lines:
        with open(path, "a", encoding="utf-8") as spill:
            spill.writelines(lines)
            spill.flush()
            os.fsync(spill.fileno())
    return sent_count, len(lines) - sent_count


def _line(key: str, record: bytes, producer: str = "", seq: int | None = None) -> str:
    entry: dict[str, Any] = {
        "key": key,
        "data": record.decode("utf-8", "surrogateescape"),
        "sent": seq is not None,
    }
    if seq is not None:
        entry.update(producer=producer, seq=seq)
    return json.dumps(entry) + "\n"
