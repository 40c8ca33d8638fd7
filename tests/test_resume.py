"""Resume positions: what each feed kind reads as its place, and going on from it.

The sans-IO half feeds real wire lines (Kubernetes watch events, CouchDB
changes rows, etcd gateway answers) through each :class:`Resume`; the rest
runs a :class:`Hunter` against the emulator's Kubernetes watch and CouchDB
changes modes, dropping the connection every few records, and checks that
every record arrives exactly once and what each reconnect asked for.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted
from support import get_json

from tidehunter_tx import Hunter
from tidehunter_tx.counter import StateCounter
from tidehunter_tx.framing import LineFramer
from tidehunter_tx.gate import LocalGate
from tidehunter_tx.policy import Backoff, BackoffConfig
from tidehunter_tx.resume import (
    CouchDBResume,
    EtcdResume,
    JsonPointerResume,
    KubernetesResume,
    ResumeRestart,
    ResumingFramer,
    make_resume,
    parse_pointer,
    with_query,
)
from tidehunter_tx.sinks import QueueSink, RecordQueue


def line(value: Any) -> bytes:
    return json.dumps(value).encode()


def pod(kind: str, version: str) -> bytes:
    return line(
        {
            "type": kind,
            "object": {"kind": "Pod", "metadata": {"resourceVersion": version}},
        }
    )


def quick() -> Backoff:
    config = BackoffConfig(
        network_step=0.01, jitter=0.0, short_initial=0.01, short_stream=0.0
    )
    return Backoff(config, random.Random(3))


# -- Kubernetes ----------------------------------------------------------------


def test_kubernetes_position_is_the_last_events_resource_version() -> None:
    resume = KubernetesResume()
    kept, positions = resume.take([pod("ADDED", "7"), pod("MODIFIED", "9")])
    assert kept == [pod("ADDED", "7"), pod("MODIFIED", "9")]
    assert positions == [b"7", b"9"]
    assert resume.position == b"9"
    url, data = resume.request("http://k/api/v1/pods?watch=true", None)
    assert url == "http://k/api/v1/pods?watch=true&resourceVersion=9"
    assert data is None


def test_kubernetes_bookmarks_move_the_position_and_are_not_records() -> None:
    resume = KubernetesResume()
    kept, positions = resume.take([pod("ADDED", "3"), pod("BOOKMARK", "12")])
    assert kept == [pod("ADDED", "3")] and positions == [b"3"]
    assert resume.position == b"12"
    assert resume.not_records == {"bookmark": 1}


def test_kubernetes_410_is_no_record_and_restarts_without_a_version() -> None:
    resume = KubernetesResume()
    gone = line(
        {
            "type": "ERROR",
            "object": {"kind": "Status", "code": 410, "message": "too old: 3 (40)"},
        }
    )
    with pytest.raises(ResumeRestart) as raised:
        resume.take([pod("ADDED", "3"), gone, pod("ADDED", "4")])
    restart = raised.value
    assert restart.records == [pod("ADDED", "3")] and restart.positions == [b"3"]
    assert restart.position is None and restart.prompt
    assert "a relist follows" in str(restart) and "too old: 3 (40)" in str(restart)
    assert resume.not_records == {"expired": 1}
    # The version the user's URL started from is dropped too: it is gone.
    url, _ = resume.request("http://k/pods?watch=1&resourceVersion=3", None)
    assert url == "http://k/pods?watch=1"


def test_kubernetes_other_errors_are_counted_never_records() -> None:
    resume = KubernetesResume()
    error = line({"type": "ERROR", "object": {"kind": "Status", "code": 500}})
    kept, _ = resume.take([error, pod("ADDED", "5")])
    assert kept == [pod("ADDED", "5")]
    assert resume.not_records == {"error": 1}


def test_a_users_url_is_sent_as_written_until_a_position_is_known() -> None:
    resume = KubernetesResume()
    url = "http://k/pods?watch=true&resourceVersion=5&x=a%2Fb"
    assert resume.request(url, None) == (url, None)


# -- CouchDB -------------------------------------------------------------------


def test_couchdb_seq_kept_as_the_server_gave_it_and_last_seq_not_a_record() -> None:
    resume = CouchDBResume()
    rows = [
        line({"seq": "1-g1AA", "id": "a", "changes": []}),
        line({"seq": 2, "id": "b", "changes": []}),
        line({"last_seq": "5-g1AB", "pending": 0}),
    ]
    kept, positions = resume.take(rows)
    assert kept == rows[:2] and positions == [b"1-g1AA", b"2"]
    assert resume.position == b"5-g1AB"
    assert resume.not_records == {"last_seq": 1}
    url, _ = resume.request("http://c/db/_changes?feed=continuous", None)
    assert url == "http://c/db/_changes?feed=continuous&since=5-g1AB"


# -- etcd ----------------------------------------------------------------------


def _kv(key: str, revision: int) -> dict[str, str]:
    return {"key": key, "mod_revision": str(revision), "value": "dg=="}


def test_etcd_each_event_is_one_record_and_the_position_is_revision_plus_one() -> None:
    resume = EtcdResume()
    created = line({"result": {"header": {"revision": "4"}, "created": True}})
    two = line(
        {
            "result": {
                "header": {"revision": "6"},
                "events": [
                    {"kv": _kv("YQ==", 5)},
                    {"type": "DELETE", "kv": _kv("Yg==", 6)},
                ],
            }
        }
    )
    kept, positions = resume.take([created, two])
    assert [json.loads(r) for r in kept] == [
        {"type": "PUT", "kv": _kv("YQ==", 5)},
        {"type": "DELETE", "kv": _kv("Yg==", 6)},
    ]
    assert positions == [b"6", b"7"]
    assert resume.not_records == {"created": 1}
    body = b'{"create_request": {"key": "YQ==", "range_end": "Yg=="}}'
    url, data = resume.request("http://e/v3/watch", body)
    assert url == "http://e/v3/watch"
    assert json.loads(data or b"") == {
        "create_request": {"key": "YQ==", "range_end": "Yg==", "start_revision": 7}
    }


def test_etcd_progress_moves_the_position_and_is_not_a_record() -> None:
    resume = EtcdResume()
    resume.position = b"3"
    kept, _ = resume.take([line({"result": {"header": {"revision": "9"}}})])
    assert kept == [] and resume.position == b"10"
    assert resume.not_records == {"progress": 1}


def test_etcd_compaction_restarts_from_the_compact_revision_saying_what_is_gone() -> (
    None
):
    resume = EtcdResume()
    resume.position = b"3"
    canceled = line(
        {
            "result": {
                "header": {"revision": "20"},
                "canceled": True,
                "compact_revision": "15",
            }
        }
    )
    with pytest.raises(ResumeRestart) as raised:
        resume.take([canceled])
    assert raised.value.position == b"15" and raised.value.prompt
    assert "12 revisions from 3 on are gone" in str(raised.value)
    assert resume.position == b"15"


def test_etcd_needs_a_watch_body() -> None:
    with pytest.raises(ValueError, match="create_request"):
        Hunter("http://127.0.0.1:1/v3/watch", method="POST", resume="etcd")


# -- a JSON pointer ------------------------------------------------------------


def test_pointer_follows_rfc_6901() -> None:
    assert parse_pointer("/a~1b/m~0n/0") == ["a/b", "m~n", "0"]
    with pytest.raises(ValueError, match="starts with '/'"):
        parse_pointer("cursor")
    resume = JsonPointerResume("/meta/a~1b", "after")
    records = [line({"meta": {"a/b": 17}}), b"not json", line({"meta": {}})]
    kept, positions = resume.take(records)
    assert kept == records  # no position is no reason to drop a record
    assert positions == [b"17", b"17", b"17"]
    url, _ = resume.request("http://f/feed?after=1&k=v", None)
    assert url == "http://f/feed?k=v&after=17"


def test_make_resume_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="unknown resume kind"):
        make_resume("zookeeper")
    with pytest.raises(ValueError, match="--resume-param"):
        make_resume(None, "/x")
    with pytest.raises(ValueError, match="not both"):
        make_resume("couchdb", "/x", "after")
    assert make_resume("sse") is None
    assert with_query("http://h/p?a=1", "a", None) == "http://h/p"


# -- the limit cuts a chunk: the position of the last record delivered ---------


def test_a_limit_in_mid_chunk_stores_the_last_delivered_records_position() -> None:
    counter = StateCounter()
    queue: RecordQueue[bytes] = RecordQueue()
    gate = LocalGate(counter, QueueSink(queue))
    framer = ResumingFramer(LineFramer(), KubernetesResume())
    counter.limit = 2
    gate.start(None)
    records = framer.feed(b"".join(pod("ADDED", v) + b"\n" for v in "345"))
    gate.offer(records, framer.position, framer.record_positions)
    assert list(queue.pending) == [pod("ADDED", "3"), pod("ADDED", "4")]
    assert gate.position == b"4" and gate.dropped == 1


# -- against the emulator --------------------------------------------------------


def _seqs(h: Hunter) -> list[int]:
    return [json.loads(r)["object"]["seq"] for r in h.q.pending]


@pytest_twisted.ensureDeferred
async def test_kubernetes_watch_dropped_every_17_events_delivers_each_once(
    firehose: str,
) -> None:
    h = Hunter(
        f"{firehose}/api/v1/pods?watch=true&allowWatchBookmarks=true"
        "&count=100&drop_every=17&bookmark_every=5",
        resume="kubernetes",
        reconnect=True,
        backoff=quick(),
    )
    await h.tide_on(100)
    assert _seqs(h) == list(range(1, 101))
    assert h.position == b"100"
    status = h.status()
    assert status["position"] == "100" and status["not_records"]["bookmark"] > 0
    stats = await get_json(f"{firehose}/stats")
    assert stats["resource_versions"] == [None, "17", "34", "51", "68", "85"]


@pytest_twisted.ensureDeferred
async def test_kubernetes_410_relists_without_resource_version(
    firehose: str,
) -> None:
    h = Hunter(
        f"{firehose}/api/v1/pods?watch=true&resourceVersion=3&compacted=40&count=60",
        resume="kubernetes",
        reconnect=True,
        backoff=quick(),
    )
    await h.tide_on(20)
    assert _seqs(h) == list(range(41, 61))  # the 410 line was no record
    status = h.status()
    assert status["not_records"] == {"expired": 1}
    assert status["reconnects_by_cause"] == {"resume": 1}
    stats = await get_json(f"{firehose}/stats")
    assert stats["resource_versions"] == ["3", None]


@pytest_twisted.ensureDeferred
async def test_couchdb_changes_dropped_every_7_rows_resume_with_since(
    firehose: str,
) -> None:
    h = Hunter(
        f"{firehose}/db/_changes?feed=continuous&count=50&drop_every=7",
        resume="couchdb",
        reconnect=True,
        backoff=quick(),
    )
    await h.tide_on(50)
    assert [json.loads(r)["id"] for r in h.q.pending] == [
        f"doc-{n}" for n in range(1, 51)
    ]
    assert h.status()["not_records"] == {"last_seq": 1}
    stats = await get_json(f"{firehose}/stats")
    sent = stats["since_values"]
    assert sent[0] is None and [int(s.split("-")[0]) for s in sent[1:]] == list(
        range(7, 50, 7)
    )


@pytest_twisted.ensureDeferred
async def test_a_second_run_of_the_same_hunter_goes_on_after_the_first(
    firehose: str,
) -> None:
    h = Hunter(
        f"{firehose}/db/_changes?feed=continuous&count=30&seq=number",
        resume="couchdb",
        reconnect=True,
        backoff=quick(),
    )
    await h.tide_on(12)
    await h.tide_on(18)
    assert [json.loads(r)["seq"] for r in h.q.pending] == list(range(1, 31))


@pytest_twisted.ensureDeferred
async def test_a_shared_redis_limit_in_mid_batch_stores_the_last_pushed_position(
    firehose: str, redis_server: Any
) -> None:
    """Redis decides how many records a batch admits: the script stores the
    position of the last one it pushed, so the next hunter goes on from there."""
    from tidehunter_tx.redis import (
        RedisGate,
        RedisStateCounter,
        connect,
        parse_redis_spec,
    )

    spec = parse_redis_spec(redis_server.url(key="sc"))
    target = parse_redis_spec(redis_server.url(key="q"))
    url = f"{firehose}/api/v1/pods?watch=true&count=100"
    for limit in (25, 30):
        connection = connect(spec)
        counter = RedisStateCounter(connection, spec.key)
        h = Hunter(
            url,
            gate=RedisGate(counter, target=target),
            resume="kubernetes",
            feed_id="pods",
        )
        await h.tide_on(limit)
        assert h.position == b"%d" % (25 if limit == 25 else 55)
        counter.close()
        await connection.disconnect()
    rows = redis_server.command("LRANGE", "q", 0, -1)
    assert [json.loads(row)["object"]["seq"] for row in rows] == list(range(1, 56))
    assert redis_server.hgetall("sc")["position:pods"] == "55"
