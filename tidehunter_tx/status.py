"""The one definition of a hunter's status: ``Hunter.status()`` and AMP ``Status``.

``Hunter.status()`` returns exactly these fields, and the AMP ``Status``
command's response schema is generated from this table, so the two cannot
drift apart.  No field ever carries a credential: the URL is shown without
user, password or query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["STATUS_FIELDS", "StatusField", "check_status"]


@dataclass(frozen=True)
class StatusField:
    name: str
    kind: type  # int, float, str, or dict (sent as a JSON object)
    optional: bool
    meaning: str


STATUS_FIELDS: tuple[StatusField, ...] = (
    StatusField(
        "state",
        str,
        False,
        "idle, connecting, streaming, paused, backing_off, stopping or stopped",
    ),
    StatusField("url", str, False, "scheme, host and path of the feed"),
    StatusField("count", int, False, "records counted in this run (the counter's)"),
    StatusField("total", int, False, "records of earlier runs (the counter's)"),
    StatusField("limit", int, False, "the run's record limit; 0 = none"),
    StatusField("bytes", int, False, "body bytes read"),
    StatusField(
        "read",
        int,
        False,
        "records read (each delivered, in flight, spilled or dropped)",
    ),
    StatusField("records", int, False, "records this hunter delivered"),
    StatusField(
        "in_flight", int, False, "records read whose fate the sink has not told yet"
    ),
    StatusField("spilled", int, False, "records written to the spill file instead"),
    StatusField("lost", int, False, "records a sink took but could not deliver"),
    StatusField("keepalives", int, False, "keep-alives read (never records)"),
    StatusField("skipped", int, False, "records over max_record_bytes, skipped"),
    StatusField("truncated", int, False, "partial records at a body's end, dropped"),
    StatusField("dropped", int, False, "records read after the run was over"),
    StatusField("pauses", int, False, "times the socket was paused"),
    StatusField(
        "paused_seconds",
        float,
        False,
        "seconds the socket was paused in all (sink full or asked)",
    ),
    StatusField("paused_since", float, True, "when the socket was paused, while it is"),
    StatusField("queued", int, False, "records in the API queue, not taken yet"),
    StatusField(
        "batches_in_flight",
        int,
        False,
        "Redis calls sent and not answered yet",
    ),
    StatusField("reconnects", int, False, "reconnects scheduled"),
    StatusField("reconnects_by_cause", dict, False, "reconnects per cause"),
    StatusField("stalls", int, False, "connections judged dead by the stall timer"),
    StatusField("backoff", float, False, "seconds of the backoff wait under way"),
    StatusField(
        "retry_in", float, False, "seconds left until the next connection attempt"
    ),
    StatusField("connected_since", float, True, "when the stream connected"),
    StatusField("last_record_at", float, True, "when the last record arrived"),
    StatusField("last_error", str, True, "why the last connection ended"),
    StatusField("waiting", str, True, "why delivery waits (a Redis refusal, retried)"),
    StatusField(
        "position", str, True, "where the feed stands after the last record stored"
    ),
    StatusField(
        "not_records",
        dict,
        False,
        "lines that only move the position or report, by reason (bookmark, ...)",
    ),
)


def check_status(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` itself, once it is known to hold exactly the schema's fields."""
    names = {field.name for field in STATUS_FIELDS}
    if set(status) != names:
        missing, extra = names - set(status), set(status) - names
        raise ValueError(f"status fields differ: missing {missing}, extra {extra}")
    return status
