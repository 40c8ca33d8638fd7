"""Exactly once across SIGKILL: a real ``twistd`` daemon killed and started again.

The emulator (its own process) streams a Kubernetes watch, a CouchDB changes
feed and an event stream at a steady rate; the daemon is killed with SIGKILL
twice mid-stream and started again with the same arguments.  Every record
must then be in the sink exactly once, in order: the position stored with
the records (a state file beside a file sink, the counter hash or the
positions hash beside a Redis list) is where the next daemon goes on from.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, hunt, wait_until
from support import Daemon

COUNT = 600
RATE = 400


def _lines(path: Path) -> list[Any]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):  # a torn tail, until cut back
            out.append(json.loads(raw))
    return out


def _kill_twice_then_finish(
    daemons: list[Daemon],
    workdir: Path,
    args: tuple[str, ...],
    delivered: Any,
) -> Daemon:
    """Start, SIGKILL at a third and at two thirds, start again; wait for all."""
    for step, at in enumerate((COUNT // 3, 2 * COUNT // 3)):
        daemon = hunt(daemons, workdir / f"run{step}", *args)
        wait_until(lambda at=at: delivered() >= at, timeout=30)
        daemon.process.kill()
        daemon.process.wait()
    last = hunt(daemons, workdir / "run2", *args)
    wait_until(lambda: delivered() >= COUNT, timeout=30)
    last.terminate()
    assert last.wait(timeout=15) == 0, last.output()
    return last


def test_kubernetes_watch_into_a_file_exactly_once_across_sigkill(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = tmp_path / "pods.jsonl"
    args = (
        f"{firehose_process}/api/v1/pods?watch=true&allowWatchBookmarks=true"
        f"&count={COUNT}&rate={RATE}&bookmark_every=50",
        "--resume",
        "kubernetes",
        "--sink",
        f"file:{sink}",
    )
    _kill_twice_then_finish(daemons, tmp_path, args, lambda: len(_lines(sink)))
    assert sink.read_bytes().count(b"\n") == COUNT  # no torn line left
    seqs = [event["object"]["seq"] for event in _lines(sink)]
    assert seqs == list(range(1, COUNT + 1))
    state = json.loads((tmp_path / "pods.jsonl.state").read_text())
    assert state == {"length": sink.stat().st_size, "position": str(COUNT)}
    assert "BOOKMARK" not in sink.read_text()
    stats = json.loads(_get(f"{firehose_process}/stats"))
    # Each daemon after the first asked to go on from a version it stored.
    versions = stats["resource_versions"]
    assert versions[0] is None and all(v is not None for v in versions[1:3])


def test_event_stream_into_a_file_exactly_once_across_sigkill(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = tmp_path / "events.jsonl"
    args = (
        f"{firehose_process}/firehose?format=sse&count={COUNT}&rate={RATE}&size=60",
        "--framing",
        "sse",
        "--sink",
        f"file:{sink}",
    )
    _kill_twice_then_finish(daemons, tmp_path, args, lambda: len(_lines(sink)))
    assert sink.read_bytes().count(b"\n") == COUNT  # no torn line left
    assert [record["id"] for record in _lines(sink)] == list(range(COUNT))
    stats = json.loads(_get(f"{firehose_process}/stats"))
    assert stats["last_event_ids"][0] is None
    assert all(sent is not None for sent in stats["last_event_ids"][1:3])


@pytest.mark.parametrize("counter", ["redis", "memory"])
def test_couchdb_changes_into_a_redis_list_exactly_once_across_sigkill(
    firehose_process: str,
    tmp_path: Path,
    daemons: list[Daemon],
    redis_server: RedisServer,
    counter: str,
) -> None:
    args: tuple[str, ...] = (
        f"{firehose_process}/db/_changes?feed=continuous&count={COUNT}"
        f"&rate={RATE}&heartbeat=500",
        "--resume",
        "couchdb",
        "--sink",
        redis_server.url(key="q"),
        "--feed-id",
        "changes-of-db",
    )
    if counter == "redis":
        args += ("--counter", redis_server.url(key="sc"))

    def delivered() -> int:
        return int(redis_server.command("LLEN", "q") or 0)

    _kill_twice_then_finish(daemons, tmp_path, args, delivered)
    rows = redis_server.command("LRANGE", "q", 0, -1)
    assert isinstance(rows, list)
    assert [json.loads(row)["id"] for row in rows] == [  # type: ignore[arg-type]
        f"doc-{n}" for n in range(1, COUNT + 1)
    ]
    kept_in = "sc" if counter == "redis" else "q:positions"
    position = redis_server.hgetall(kept_in)["position:changes-of-db"]
    assert position.split("-")[0] == str(COUNT)


def test_a_data_file_shorter_than_its_state_is_refused(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = tmp_path / "pods.jsonl"
    sink.write_bytes(b"{}\n")
    (tmp_path / "pods.jsonl.state").write_text('{"length": 4000, "position": "7"}')
    daemon = hunt(
        daemons,
        tmp_path / "run",
        f"{firehose_process}/api/v1/pods?watch=true",
        "--resume",
        "kubernetes",
        "--sink",
        f"file:{sink}",
    )
    assert daemon.wait(timeout=15) != 0
    assert "holds 3 bytes but its state file" in daemon.output()
    assert sink.read_bytes() == b"{}\n"


def _get(url: str) -> bytes:
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return bytes(response.read())
