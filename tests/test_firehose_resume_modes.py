"""The emulator's resume modes, over real sockets on 127.0.0.1: a Kubernetes
watch (``/api/v1/pods?watch=true``, resourceVersions, bookmarks, the in-stream
410) and a CouchDB continuous ``_changes`` feed (``since``, ``last_seq``,
heartbeats)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from test_firehose import PausingReader, dechunk, fetch, raw_get, stats_of, wait_until
from twisted.internet import reactor

from tidehunter_tx.firehose import FirehoseSite, make_site

WATCH = "/api/v1/pods?watch=true"


@pytest.fixture
def emulator() -> Iterator[tuple[str, FirehoseSite]]:
    """An emulator of its own (own counters) on a free port of 127.0.0.1."""
    site = make_site()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}", site
    finally:
        pytest_twisted.blockon(port.stopListening())


async def lines_of(base: str, target: str) -> tuple[list[Any], bool]:
    """The JSON lines of a response as on the wire, and whether it ended cleanly
    (the final chunk came) rather than being dropped."""
    head, body = await raw_get(base, target)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"Transfer-Encoding: chunked" in head
    payload, ended, rest = dechunk(body)
    assert rest in (b"", b"\r\n"), rest
    assert payload.endswith(b"\n") or not payload
    return [json.loads(line) for line in payload.splitlines()], ended


def pod_event(rv: int, objects: int = 10, namespace: str = "default") -> Any:
    """The event the watch must send for resourceVersion ``rv``."""
    return {
        "type": "ADDED" if rv <= objects else "MODIFIED",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": f"pod-{(rv - 1) % objects + 1}",
                "namespace": namespace,
                "resourceVersion": str(rv),
            },
            "seq": rv,
        },
    }


def bookmark(rv: int) -> Any:
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "resourceVersion": str(rv),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        },
    }


def rvs(events: list[Any]) -> list[int]:
    return [e["object"]["seq"] for e in events if e["type"] in ("ADDED", "MODIFIED")]


async def stalls_when_not_read(base: str, target: str) -> None:
    """A client that stops reading pauses the endless stream (IPushProducer);
    when it goes away the stream is released."""
    response = await treq.get(base + target, unbuffered=True, persistent=False)
    assert response.code == 200
    reader = PausingReader()
    response.deliverBody(reader)
    await wait_until(lambda: reader.received > 0)
    last: dict[str, int] = {}
    steady = 0

    async def stalled() -> bool:
        nonlocal last, steady
        now = await stats_of(base)
        same = now["bytes_written"] == last.get("bytes_written")
        steady = steady + 1 if same and now["paused_now"] >= 1 else 0
        last = now
        return steady >= 3

    await wait_until(stalled, timeout=8)
    assert last["active"] == 1 and last["pauses"] >= 1
    reader.transport.stopProducing()  # type: ignore[union-attr]
    await reader.done

    async def released() -> bool:
        now = await stats_of(base)
        return now["active"] == 0 and now["paused_now"] == 0

    await wait_until(released)


# --- Kubernetes watch ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watch_sends_the_history_as_added_then_modified_pod_events(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    code, headers, _ = await fetch(base + WATCH + "&count=1")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    events, ended = await lines_of(base, WATCH + "&count=7&objects=3")
    assert ended
    assert events == [pod_event(rv, objects=3) for rv in range(1, 8)]
    assert [e["type"] for e in events] == ["ADDED"] * 3 + ["MODIFIED"] * 4
    events, _ = await lines_of(
        base, "/api/v1/namespaces/kube-system/pods?watch=1&count=2"
    )
    assert events == [pod_event(rv, namespace="kube-system") for rv in (1, 2)]
    assert site.stats.records_written == 1 + 7 + 2


@pytest.mark.parametrize("rv", ["", "&resourceVersion=0", "&resourceVersion="])
@pytest_twisted.ensureDeferred
async def test_watch_without_a_resource_version_starts_at_the_oldest_event(
    emulator: tuple[str, FirehoseSite], rv: str
) -> None:
    base, _ = emulator
    events, ended = await lines_of(base, WATCH + "&count=12" + rv)
    assert ended and rvs(events) == list(range(1, 13))


@pytest_twisted.ensureDeferred
async def test_watch_from_a_resource_version_sends_exactly_the_later_events(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    events, ended = await lines_of(base, WATCH + "&count=20&resourceVersion=13")
    assert ended and events == [pod_event(rv) for rv in range(14, 21)]
    # At or past the end of a finite history: nothing, and the body ends.
    assert await lines_of(base, WATCH + "&count=20&resourceVersion=20") == ([], True)
    assert await lines_of(base, WATCH + "&count=20&resourceVersion=99") == ([], True)


@pytest_twisted.ensureDeferred
async def test_watch_rate_paces_the_events(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    started = time.monotonic()
    events, ended = await lines_of(base, WATCH + "&count=4&rate=50")
    assert ended and rvs(events) == [1, 2, 3, 4]
    assert time.monotonic() - started >= 0.05  # due at 0, 20, 40, 60 ms


@pytest_twisted.ensureDeferred
async def test_watch_older_than_the_compaction_gets_one_in_stream_410(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    events, ended = await lines_of(
        base, WATCH + "&count=30&compacted=10&resourceVersion=4"
    )
    assert ended
    assert events == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 4 (10)",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]
    assert site.stats.faults == {"expired": 1}
    # Without a resourceVersion (a relist) the watch starts after compaction.
    events, _ = await lines_of(base, WATCH + "&count=14&compacted=10")
    assert events == [pod_event(rv) for rv in range(11, 15)]
    # The compacted version itself and later ones are still served.
    events, _ = await lines_of(
        base, WATCH + "&count=12&compacted=10&resourceVersion=10"
    )
    assert rvs(events) == [11, 12]
    events, _ = await lines_of(
        base, WATCH + "&count=14&compacted=10&resourceVersion=12"
    )
    assert rvs(events) == [13, 14]
    assert site.stats.faults == {"expired": 1}


@pytest_twisted.ensureDeferred
async def test_watch_bookmarks_follow_every_n_events_when_the_client_allows_them(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    query = "&count=8&bookmark_every=3"
    events, ended = await lines_of(base, WATCH + query + "&allowWatchBookmarks=true")
    assert ended
    assert events == [
        *(pod_event(rv) for rv in (1, 2, 3)),
        bookmark(3),
        *(pod_event(rv) for rv in (4, 5, 6)),
        bookmark(6),
        pod_event(7),
        pod_event(8),
    ]
    # Counted in events of this response: a resume at 4 bookmarks 7.
    events, _ = await lines_of(
        base, WATCH + query + "&allowWatchBookmarks=1&resourceVersion=4"
    )
    assert events == [*(pod_event(rv) for rv in (5, 6, 7)), bookmark(7), pod_event(8)]
    # A client that does not ask for bookmarks gets none.
    events, _ = await lines_of(base, WATCH + query)
    assert rvs(events) == list(range(1, 9)) and len(events) == 8


@pytest_twisted.ensureDeferred
async def test_watch_error_after_puts_an_in_stream_500_and_carries_on(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    events, ended = await lines_of(base, WATCH + "&count=5&error_after=2")
    assert ended
    assert events[:2] == [pod_event(1), pod_event(2)]
    assert events[3:] == [pod_event(rv) for rv in (3, 4, 5)]
    error = events[2]
    assert error["type"] == "ERROR"
    status = error["object"]
    assert (status["kind"], status["apiVersion"]) == ("Status", "v1")
    assert (status["code"], status["reason"], status["status"]) == (
        500,
        "InternalError",
        "Failure",
    )
    assert status["message"]
    # Counted in events of this response, not from the start of the history.
    events, _ = await lines_of(base, WATCH + "&count=9&error_after=1&resourceVersion=6")
    assert [e["type"] for e in events] == ["ADDED", "ERROR", "ADDED", "ADDED"]
    assert rvs(events) == [7, 8, 9]
    assert site.stats.faults == {"error": 2}


@pytest_twisted.ensureDeferred
async def test_watch_drop_every_drops_at_history_positions_across_resumes(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    target = WATCH + "&count=25&drop_every=10"
    assert await lines_of(base, target) == (
        [pod_event(rv) for rv in range(1, 11)],
        False,
    )
    events, ended = await lines_of(base, target + "&resourceVersion=10")
    assert (rvs(events), ended) == (list(range(11, 21)), False)
    # Positions are resourceVersions: a resume at 14 is dropped after 20.
    events, ended = await lines_of(base, target + "&resourceVersion=14")
    assert (rvs(events), ended) == (list(range(15, 21)), False)
    # The history ends before the next drop: a clean end.
    events, ended = await lines_of(base, target + "&resourceVersion=20")
    assert (rvs(events), ended) == (list(range(21, 26)), True)
    assert site.stats.faults == {"drop": 3}
    # count wins over a drop at the same position.
    events, ended = await lines_of(
        base, WATCH + "&count=20&drop_every=10&resourceVersion=10"
    )
    assert (rvs(events), ended) == (list(range(11, 21)), True)
    assert site.stats.faults == {"drop": 3}


@pytest_twisted.ensureDeferred
async def test_watch_fail_times_limits_the_faults_to_the_first_requests(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    target = WATCH + "&count=6&drop_every=4&fail_times=1"
    events, ended = await lines_of(base, target)
    assert (rvs(events), ended) == ([1, 2, 3, 4], False)
    events, ended = await lines_of(base, target)
    assert (rvs(events), ended) == ([1, 2, 3, 4, 5, 6], True)
    assert site.stats.faults == {"drop": 1}


@pytest_twisted.ensureDeferred
async def test_stats_lists_the_resource_version_of_every_watch(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    before = await stats_of(base)
    assert "resource_versions" not in before  # until the first watch
    await fetch(base + WATCH + "&count=3")
    await fetch(base + WATCH + "&count=3&resourceVersion=2")
    await fetch(base + WATCH + "&count=3&resourceVersion=")
    await fetch(base + WATCH + "&count=3&resourceVersion=x")  # a 400, still logged
    await fetch(base + "/firehose?count=1")
    stats = await stats_of(base)
    assert stats["resource_versions"] == [None, "2", "", "x"]
    assert stats["last_event_ids"] == [None]  # /firehose's own list is unchanged


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("", "watch"),
        ("watch=false", "watch"),
        ("watch=yes", "watch"),
        ("watch=true&resourceVersion=abc", "resourceVersion"),
        ("watch=true&resourceVersion=-1", "resourceVersion"),
        ("watch=true&resourceVersion=1&resourceVersion=2", "resourceVersion"),
        ("watch=true&labelSelector=app", "labelSelector"),
        ("watch=true&objects=0", "objects"),
        ("watch=true&count=ten", "count"),
        ("watch=true&rate=fast", "rate"),
        ("watch=true&drop_every=0", "drop_every"),
        ("watch=true&bookmark_every=0", "bookmark_every"),
        ("watch=true&allowWatchBookmarks=maybe", "allowWatchBookmarks"),
        ("watch=true&compacted=-3", "compacted"),
        ("watch=true&error_after=x", "error_after"),
        ("watch=true&fail_times=2", "fail_times"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_watch_bad_option_answers_400_with_one_plain_line(
    emulator: tuple[str, FirehoseSite], query: str, mentions: str
) -> None:
    base, site = emulator
    code, headers, body = await fetch(base + "/api/v1/pods?" + query)
    assert code == 400
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert mentions.encode() in body
    assert site.stats.active == 0


@pytest.mark.parametrize(
    "path", ["/api/v1/services", "/api/v2/pods", "/api/v1/namespaces/Bad_NS/pods"]
)
@pytest_twisted.ensureDeferred
async def test_watch_of_another_path_is_a_404(
    emulator: tuple[str, FirehoseSite], path: str
) -> None:
    base, _ = emulator
    code, _, _ = await fetch(base + path + "?watch=true")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stalls_the_endless_watch(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    await stalls_when_not_read(base, WATCH)


# --- CouchDB continuous changes -------------------------------------------------

CHANGES = "/mydb/_changes?feed=continuous"


def seq_number(seq: int | str) -> int:
    """The change number in a seq: the integer, or a string's leading one."""
    return seq if isinstance(seq, int) else int(seq.split("-", 1)[0])


def rows_of(lines: list[Any]) -> list[Any]:
    return [line for line in lines if "changes" in line]


@pytest_twisted.ensureDeferred
async def test_changes_sends_one_row_per_change_then_last_seq(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    code, headers, _ = await fetch(base + CHANGES + "&count=1")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    lines, ended = await lines_of(base, CHANGES + "&count=5")
    assert ended
    rows, last = lines[:-1], lines[-1]
    assert [list(row) for row in rows] == [["seq", "id", "changes"]] * 5
    assert [row["id"] for row in rows] == [f"doc-{n}" for n in range(1, 6)]
    assert [seq_number(row["seq"]) for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        # CouchDB 2+ seqs: opaque strings that start with the change number.
        assert isinstance(row["seq"], str) and row["seq"].startswith(
            f"{row['id'][4:]}-"
        )
        [change] = row["changes"]
        assert list(change) == ["rev"] and change["rev"].startswith("1-")
        assert len(change["rev"]) == 34 and int(change["rev"][2:], 16) >= 0
    assert len({row["seq"] for row in rows}) == 5
    assert last == {"last_seq": rows[-1]["seq"], "pending": 0}
    assert site.stats.records_written == 1 + 5


@pytest_twisted.ensureDeferred
async def test_changes_seq_number_gives_pouchdb_style_integer_seqs(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    lines, ended = await lines_of(base, CHANGES + "&count=3&seq=number")
    assert ended
    assert [line.get("seq") for line in lines[:-1]] == [1, 2, 3]
    assert lines[-1] == {"last_seq": 3, "pending": 0}


@pytest_twisted.ensureDeferred
async def test_changes_since_a_seq_it_gave_sends_exactly_the_later_changes(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    everything, _ = await lines_of(base, CHANGES + "&count=12")
    seq_of_7 = everything[6]["seq"]
    lines, ended = await lines_of(base, CHANGES + "&count=12&since=" + seq_of_7)
    assert ended and lines == everything[7:]
    # A number works as well, and since=0 is the whole history.
    assert (await lines_of(base, CHANGES + "&count=12&since=7"))[0] == everything[7:]
    assert (await lines_of(base, CHANGES + "&count=12&since=0"))[0] == everything
    # Resumed at the end: only last_seq, as CouchDB's timeout would say.
    last = everything[-1]
    assert await lines_of(base, CHANGES + "&count=12&since=" + last["last_seq"]) == (
        [last],
        True,
    )
    lines, _ = await lines_of(base, CHANGES + "&count=3&seq=number&since=2")
    assert [line.get("seq") for line in lines] == [3, None]


@pytest_twisted.ensureDeferred
async def test_changes_since_now_starts_after_the_last_change(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    lines, ended = await lines_of(base, CHANGES + "&count=8&since=now&seq=number")
    assert (lines, ended) == ([{"last_seq": 8, "pending": 0}], True)
    # An endless history has no end yet: now is its start (drop_every ends it).
    lines, ended = await lines_of(base, CHANGES + "&since=now&drop_every=3")
    assert ([seq_number(row["seq"]) for row in lines], ended) == ([1, 2, 3], False)


@pytest_twisted.ensureDeferred
async def test_changes_heartbeat_writes_blank_lines_in_the_silence(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    started = time.monotonic()
    _, body = await raw_get(base, CHANGES + "&count=2&rate=5&heartbeat=40")
    payload, ended, _ = dechunk(body)
    assert ended and time.monotonic() - started >= 0.15  # due at 0 and 200 ms
    lines = payload.split(b"\n")
    assert lines.pop() == b""
    assert seq_number(json.loads(lines[0])["seq"]) == 1
    # The first change, blank lines every 40 ms of silence, the second, last_seq.
    assert lines[1:-2] == [b""] * (len(lines) - 3) and len(lines) - 3 >= 2
    assert seq_number(json.loads(lines[-2])["seq"]) == 2
    assert "last_seq" in json.loads(lines[-1])
    # heartbeat=true is CouchDB's default minute: nothing in a fast stream.
    fast, ended = await lines_of(base, CHANGES + "&count=2&heartbeat=true")
    assert ended and len(fast) == 3


@pytest_twisted.ensureDeferred
async def test_changes_drop_every_drops_at_history_positions_across_resumes(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    target = CHANGES + "&count=25&drop_every=10&seq=number"

    async def seqs(since: str | None) -> tuple[list[int], bool]:
        lines, ended = await lines_of(
            base, target + (f"&since={since}" if since else "")
        )
        return [line["seq"] for line in rows_of(lines)], ended

    assert await seqs(None) == (list(range(1, 11)), False)
    assert await seqs("10") == (list(range(11, 21)), False)
    assert await seqs("14") == (list(range(15, 21)), False)
    # The end of the history comes first: rows, last_seq, a clean end.
    lines, ended = await lines_of(base, target + "&since=20")
    assert ended and lines[-1] == {"last_seq": 25, "pending": 0}
    assert [row["seq"] for row in rows_of(lines)] == list(range(21, 26))
    # count wins over a drop at the same position, last_seq included.
    lines, ended = await lines_of(base, CHANGES + "&count=20&drop_every=10&since=10")
    assert ended and "last_seq" in lines[-1] and len(rows_of(lines)) == 10
    assert site.stats.faults == {"drop": 3}
    # fail_times: only the first request with this exact query is dropped.
    once = CHANGES + "&count=6&drop_every=4&fail_times=1&seq=number"
    lines, ended = await lines_of(base, once)
    assert ([row["seq"] for row in lines], ended) == ([1, 2, 3, 4], False)
    lines, ended = await lines_of(base, once)
    assert (len(rows_of(lines)), ended) == (6, True)
    assert site.stats.faults == {"drop": 4}


@pytest_twisted.ensureDeferred
async def test_stats_lists_the_since_of_every_changes_feed(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    assert "since_values" not in await stats_of(base)  # until the first feed
    await fetch(base + CHANGES + "&count=2")
    await fetch(base + "/other/_changes?feed=continuous&count=2&since=1-g1AAAA")
    await fetch(base + CHANGES + "&count=2&since=now")
    await fetch(base + CHANGES + "&count=2&since=bogus")  # a 400, still logged
    stats = await stats_of(base)
    assert stats["since_values"] == [None, "1-g1AAAA", "now", "bogus"]
    assert "resource_versions" not in stats


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("", "feed"),
        ("feed=longpoll", "feed"),
        ("feed=continuous&feed=continuous", "feed"),
        ("feed=continuous&since=abc", "since"),
        ("feed=continuous&since=-1", "since"),
        ("feed=continuous&since=", "since"),
        ("feed=continuous&since=3-", "since"),
        ("feed=continuous&heartbeat=0", "heartbeat"),
        ("feed=continuous&heartbeat=soon", "heartbeat"),
        ("feed=continuous&seq=opaque", "seq"),
        ("feed=continuous&count=-1", "count"),
        ("feed=continuous&rate=x", "rate"),
        ("feed=continuous&drop_every=0", "drop_every"),
        ("feed=continuous&fail_times=1", "fail_times"),
        ("feed=continuous&include_docs=true", "include_docs"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_changes_bad_option_answers_400_with_one_plain_line(
    emulator: tuple[str, FirehoseSite], query: str, mentions: str
) -> None:
    base, site = emulator
    code, headers, body = await fetch(base + "/mydb/_changes?" + query)
    assert code == 400
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert mentions.encode() in body
    assert site.stats.active == 0


@pytest_twisted.ensureDeferred
async def test_head_of_a_watch_or_changes_feed_starts_no_stream(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, site = emulator
    for target in (WATCH, CHANGES):
        response = await treq.head(base + target, persistent=False)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert await treq.content(response) == b""
    assert site.stats.active == 0 and site.stats.bytes_written == 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stalls_the_endless_changes_feed(
    emulator: tuple[str, FirehoseSite],
) -> None:
    base, _ = emulator
    await stalls_when_not_read(base, CHANGES + "&heartbeat=1000")
