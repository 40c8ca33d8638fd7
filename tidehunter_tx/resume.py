"""Resume positions: where a feed stands after each record, and how to go on from there.

A feed that can resume names its place in every event: Kubernetes the object's
``resourceVersion``, CouchDB each change's ``seq``, etcd each event's
``mod_revision``, an event stream its ``id``.  A :class:`Resume` reads that
place out of each record (and takes out the lines that only move it:
Kubernetes ``BOOKMARK``, CouchDB's ``last_seq``, etcd's ``created`` and
progress responses), and rewrites the request of the next connection so the
server goes on exactly after the last record delivered.  The gate stores the
position with the records it belongs to (the same Redis script, or a state
file beside a file sink), so a restarted daemon resumes there too.

:class:`ResumingFramer` puts a :class:`Resume` behind any framer: the body
protocol, the gates and the sinks see a framer whose ``position`` is the
feed's and whose ``record_positions`` say where the stream stood after each
record, so a run that ends at its limit in the middle of a chunk stores the
position of the last record it delivered, not of the chunk.

Event streams resume natively (``Last-Event-ID``, kept by
:class:`~tidehunter_tx.framing.SSEFramer`): ``--resume sse`` needs no wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.logger import Logger

from .framing import Framer, FramingError

__all__ = [
    "RESUME_KINDS",
    "CouchDBResume",
    "EtcdResume",
    "JsonPointerResume",
    "KubernetesResume",
    "Resume",
    "ResumeRestart",
    "ResumingFramer",
    "make_resume",
    "parse_pointer",
]

log = Logger()

#: What ``--resume`` accepts (``sse`` is the event stream's own Last-Event-ID).
RESUME_KINDS = ("kubernetes", "couchdb", "etcd", "sse")


class ResumeRestart(FramingError):
    """The feed says the stream cannot go on from here; connect again.

    ``position`` is where the next connection starts (``None``: from the
    start, as a Kubernetes relist does).  ``prompt`` says the new connection
    may go at once (a new position fixes the cause), rather than after the
    backoff a broken connection gets.
    """

    def __init__(
        self,
        message: str,
        position: bytes | None,
        *,
        prompt: bool,
        records: list[bytes] | None = None,
    ) -> None:
        super().__init__(message, records)
        self.position = position
        self.prompt = prompt
        #: The position after each of ``records``.
        self.positions: list[bytes | None] = []


class Resume:
    """One feed's idea of a position: read from records, sent on reconnect.

    Subclasses implement :meth:`_place` (what one record is: a record with
    its position, or a line that only moves the position) and
    :meth:`_with_position` (the request that goes on from a position).
    """

    #: The name ``--resume`` knows this kind by.
    name = ""

    def __init__(self) -> None:
        self.position: bytes | None = None
        #: Lines taken out of the records, by reason (bookmark, last_seq, ...).
        self.not_records: dict[str, int] = {}
        #: Set once the feed threw its position away (410, a compaction): the
        #: request then drops a position the user's URL or body carried.
        self._forgotten = False

    def take(self, records: list[bytes]) -> tuple[list[bytes], list[bytes | None]]:
        """The records that are records, and the position after each of them.

        Raises :class:`ResumeRestart` (holding the records before it) when a
        line says the stream must start again elsewhere.
        """
        kept: list[bytes] = []
        positions: list[bytes | None] = []
        for record in records:
            try:
                value = json.loads(record)
            except ValueError:
                value = None
            try:
                placed = self._place(record, value)
            except ResumeRestart as restart:
                self._restart(restart, kept, positions)
            if placed is None:
                continue  # moved the position (or counted), not a record
            record, position = placed
            if position is not None:
                self.position = position
            kept.append(record)
            positions.append(self.position)
        return kept, positions

    def _restart(
        self,
        restart: ResumeRestart,
        kept: list[bytes],
        positions: list[bytes | None],
    ) -> NoReturn:
        """Hand the records before the restart on with it, and move there."""
        restart.records, restart.positions = kept, positions
        self.position = restart.position
        self._forgotten = restart.position is None
        raise restart

    def request(self, url: str, data: bytes | None) -> tuple[str, bytes | None]:
        """The URL and body of a request that goes on from :attr:`position`."""
        if self.position is None and not self._forgotten:
            return url, data  # nothing known yet: as the user wrote it
        return self._with_position(url, data, self.position)

    def _not_a_record(self, reason: str) -> None:
        self.not_records[reason] = self.not_records.get(reason, 0) + 1

    def _place(
        self, record: bytes, value: Any
    ) -> tuple[bytes, bytes | None] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _with_position(
        self, url: str, data: bytes | None, position: bytes | None
    ) -> tuple[str, bytes | None]:  # pragma: no cover - abstract
        raise NotImplementedError


def with_query(url: str, name: str, value: bytes | None) -> str:
    """``url`` with query parameter ``name`` set to ``value`` (removed for None)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != name]
    if value is not None:
        query.append((name, value.decode("utf-8", "surrogateescape")))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _text(value: Any) -> bytes | None:
    """A position as the server gave it: a string's text, a number's digits."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return json.dumps(value).encode("ascii")
    return None


def _get(value: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _excerpt(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:200] + "..."


class QueryResume(Resume):
    """A position sent back as one query parameter of the URL."""

    param = ""

    def _with_position(
        self, url: str, data: bytes | None, position: bytes | None
    ) -> tuple[str, bytes | None]:
        return with_query(url, self.param, position), data


class KubernetesResume(QueryResume):
    """A Kubernetes watch: ``resourceVersion``, bookmarks, and 410 Gone.

    The position is the last event's ``object.metadata.resourceVersion``.
    ``BOOKMARK`` events move it and are not records.  An in-stream ``ERROR``
    whose Status has code 410 (the version is too old, compacted away) means
    the watch must start again without a version: the server then sends
    every object as ``ADDED`` (a relist).  Other ``ERROR`` events are logged
    and counted, never records.
    """

    name = "kubernetes"
    param = "resourceVersion"

    def _place(self, record: bytes, value: Any) -> tuple[bytes, bytes | None] | None:
        kind = _get(value, "type")
        version = _text(_get(value, "object", "metadata", "resourceVersion"))
        if kind == "BOOKMARK":
            self._not_a_record("bookmark")
            if version is not None:
                self.position = version
            return None
        if kind == "ERROR":
            status = _get(value, "object") or {}
            code = _get(status, "code")
            message = _get(status, "message") or _get(status, "reason") or ""
            if code == 410:
                self._not_a_record("expired")
                old = (self.position or b"?").decode("utf-8", "replace")
                raise ResumeRestart(
                    f"the watch's resourceVersion {old} is too old (410 Gone:"
                    f" {message}); watching again without resourceVersion:"
                    " a relist follows (every object again, as ADDED)",
                    None,
                    prompt=True,
                )
            self._not_a_record("error")
            log.warn(
                "tidehunter: the Kubernetes watch sent an ERROR event (not a "
                "record): {excerpt}",
                tidehunter_event="feed_error",
                feed=self.name,
                excerpt=_excerpt(status),
            )
            return None
        return record, version


class CouchDBResume(QueryResume):
    """CouchDB (or PouchDB) ``_changes``: each row's ``seq``, sent as ``since``.

    A ``seq`` is kept exactly as the server gave it (a number, or CouchDB
    2's opaque string).  The closing ``{"last_seq": ...}`` line moves the
    position and is not a record; an ``{"error": ...}`` line is logged and
    counted.
    """

    name = "couchdb"
    param = "since"

    def _place(self, record: bytes, value: Any) -> tuple[bytes, bytes | None] | None:
        if isinstance(value, dict):
            if "seq" in value:
                return record, _text(value["seq"])
            if "last_seq" in value:
                self._not_a_record("last_seq")
                last = _text(value["last_seq"])
                if last is not None:
                    self.position = last
                return None
            if "error" in value:
                self._not_a_record("error")
                log.warn(
                    "tidehunter: the changes feed sent an error (not a record):"
                    " {excerpt}",
                    tidehunter_event="feed_error",
                    feed=self.name,
                    excerpt=_excerpt(value),
                )
                return None
        return record, None


class EtcdResume(Resume):
    """etcd's v3 JSON gateway ``POST /v3/watch``: one record per event.

    A watch response may hold many events; each becomes one record,
    ``{"type": "PUT"|"DELETE", "kv": {...}}`` (with ``prev_kv`` when the
    watch asked for it).  The position is the last event's ``mod_revision``
    + 1, sent as ``create_request.start_revision`` in the body.  ``created``
    and progress responses are not records (progress moves the position to
    the header's revision + 1).  A ``canceled`` response with
    ``compact_revision`` (what we asked for was compacted away) starts again
    from that revision, saying how many revisions are gone.
    """

    name = "etcd"

    def __init__(self) -> None:
        super().__init__()
        self.compacted = 0  # revisions lost to compaction, all told

    def take(self, records: list[bytes]) -> tuple[list[bytes], list[bytes | None]]:
        kept: list[bytes] = []
        positions: list[bytes | None] = []
        for record in records:
            try:
                value = json.loads(record)
            except ValueError:
                value = None
            result = _get(value, "result")
            if not isinstance(result, dict):
                self._gateway_error(value, record)
                continue
            events = result.get("events")
            if isinstance(events, list) and events:
                for event in events:
                    one, position = self._event(event)
                    if position is not None:
                        self.position = position
                    kept.append(one)
                    positions.append(self.position)
                continue
            try:
                self._control(result)
            except ResumeRestart as restart:
                self._restart(restart, kept, positions)
        return kept, positions

    def _event(self, event: Any) -> tuple[bytes, bytes | None]:
        kv = _get(event, "kv")
        one: dict[str, Any] = {"type": _get(event, "type") or "PUT", "kv": kv}
        if isinstance(event, dict) and "prev_kv" in event:
            one["prev_kv"] = event["prev_kv"]
        revision = _revision(_get(kv, "mod_revision"))
        position = None if revision is None else b"%d" % (revision + 1)
        return json.dumps(one, separators=(",", ":")).encode("utf-8"), position

    def _control(self, result: dict[str, Any]) -> None:
        if result.get("canceled"):
            compact = _revision(result.get("compact_revision"))
            reason = result.get("cancel_reason") or "no reason given"
            if compact is not None:
                self._not_a_record("compacted")
                asked = _revision(self.position) or compact
                gone = max(compact - asked, 0)
                self.compacted += gone
                raise ResumeRestart(
                    f"etcd compacted revisions before {compact}: {gone} "
                    f"revision{'' if gone == 1 else 's'} from {asked} on are gone"
                    f" for good; watching again from revision {compact}",
                    b"%d" % compact,
                    prompt=True,
                )
            self._not_a_record("canceled")
            raise ResumeRestart(
                f"etcd canceled the watch: {reason}", self.position, prompt=False
            )
        if result.get("created"):
            self._not_a_record("created")
            return
        self._not_a_record("progress")
        revision = _revision(_get(result, "header", "revision"))
        if revision is not None:
            ahead = revision + 1
            current = _revision(self.position)
            if current is None or ahead > current:
                self.position = b"%d" % ahead

    def _gateway_error(self, value: Any, record: bytes) -> None:
        self._not_a_record("error")
        log.warn(
            "tidehunter: the etcd watch sent an error (not a record): {excerpt}",
            tidehunter_event="feed_error",
            feed=self.name,
            excerpt=_excerpt(value)
            if value is not None
            else record[:200].decode("utf-8", "replace"),
        )

    def _with_position(
        self, url: str, data: bytes | None, position: bytes | None
    ) -> tuple[str, bytes | None]:
        body = watch_body(data)
        create = body["create_request"]
        if position is None:
            create.pop("start_revision", None)
        else:
            create["start_revision"] = int(position)
        return url, json.dumps(body, separators=(",", ":")).encode("utf-8")


def watch_body(data: bytes | None) -> dict[str, Any]:
    """The JSON body of an etcd watch request; ValueError if it is not one."""
    try:
        body = json.loads(data or b"")
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("create_request"), dict):
        raise ValueError(
            "--resume etcd needs the watch request as the body: --data "
            '\'{"create_request": {"key": "<base64>", ...}}\''
        )
    return body


def _revision(value: Any) -> int | None:
    """etcd sends int64 revisions as JSON strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (str, bytes)) and value.strip().isdigit():
        return int(value)
    return None


def parse_pointer(pointer: str) -> list[str]:
    """An RFC 6901 JSON pointer as its reference tokens."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(
            f"a JSON pointer starts with '/' (RFC 6901), not {pointer!r}:"
            " e.g. --resume-from /meta/offset"
        )
    tokens = pointer[1:].split("/")
    for token in tokens:
        rest = token.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise ValueError(f"{pointer!r}: '~' must be followed by 0 or 1 (RFC 6901)")
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def _resolve(value: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(value, dict):
            if token not in value:
                return None
            value = value[token]
        elif isinstance(value, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")):
                return None
            index = int(token)
            if index >= len(value):
                return None
            value = value[index]
        else:
            return None
    return value


class JsonPointerResume(QueryResume):
    """Any JSON-lines feed: the position is the value at a JSON pointer.

    Sent back as the query parameter ``param``.  A record without a value
    there (or not JSON) is still a record: the position stays where it was.
    """

    name = "pointer"

    def __init__(self, pointer: str, param: str) -> None:
        super().__init__()
        if not param:
            raise ValueError("--resume-from needs --resume-param NAME")
        self.pointer = pointer
        self.param = param
        self._tokens = parse_pointer(pointer)

    def _place(self, record: bytes, value: Any) -> tuple[bytes, bytes | None] | None:
        return record, _text(_resolve(value, self._tokens))


class ResumingFramer:
    """A framer whose records pass through a :class:`Resume` first.

    Counts, retry hint and the unfinished tail are the wrapped framer's;
    ``position`` is the resume's, and ``record_positions`` the position after
    each record of the last :meth:`feed`.
    """

    __slots__ = ("_framer", "record_positions", "resume")

    def __init__(self, framer: Framer, resume: Resume) -> None:
        self._framer = framer
        self.resume = resume
        self.record_positions: list[bytes | None] | None = None

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
        try:
            records = self._framer.feed(data)
        except ResumeRestart:
            raise
        except FramingError as error:
            # The records before the bad bytes still have their places.
            error.records, self.record_positions = self.resume.take(error.records)
            raise
        try:
            kept, self.record_positions = self.resume.take(records)
        except ResumeRestart as restart:
            self.record_positions = restart.positions
            raise
        return kept

    def close(self) -> bytes:
        return self._framer.close()

    @property
    def position(self) -> bytes | None:
        return self.resume.position

    @property
    def retry_ms(self) -> int | None:
        return self._framer.retry_ms

    def resume_from(self, position: bytes | None) -> None:
        self.resume.position = position


def make_resume(
    kind: str | None, pointer: str | None = None, param: str | None = None
) -> Resume | None:
    """The :class:`Resume` named by ``--resume`` / ``--resume-from``.

    ``sse`` (and no kind at all) is None: the event stream's framer keeps its
    own position.
    """
    if pointer is not None:
        if kind not in (None, "sse") and kind:
            raise ValueError("give --resume or --resume-from, not both")
        return JsonPointerResume(pointer, param or "")
    if param:
        raise ValueError("--resume-param goes with --resume-from POINTER")
    factories: dict[str, Callable[[], Resume]] = {
        "kubernetes": KubernetesResume,
        "couchdb": CouchDBResume,
        "etcd": EtcdResume,
    }
    if kind is None or kind == "sse":
        return None
    if kind not in factories:
        raise ValueError(
            f"unknown resume kind {kind!r}; expected one of: {', '.join(RESUME_KINDS)}"
        )
    return factories[kind]()
