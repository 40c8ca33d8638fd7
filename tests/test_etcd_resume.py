"""``--resume etcd`` across crashes: a real etcd, a real daemon, SIGKILLed twice.

A thread puts keys under a prefix at a steady pace (and, now and then, keys
just outside it) while the daemon watches the prefix.  The daemon is killed
with SIGKILL twice mid-stream and started again with the same arguments in
the same directory; each new daemon must go on from the position stored with
the records (``mod_revision + 1``, sent as ``create_request.start_revision``).
Once the puts are done and the last daemon has caught up it is stopped with
SIGTERM, and the sink must hold every put exactly once, in revision order,
and nothing from outside the prefix.

Two stores of the position: a file sink's state file (``kv.jsonl.state``,
the data cut back to its length on start) and a Redis counter's
``position:FEED`` field, written by the script that pushes each batch.

A third test compacts etcd past the stored position while the daemon is
down: the daemon must say so and go on from the compaction, each later put
once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_support import Etcd, find_etcd, post, unb64, watch_body
from redis_support import RedisServer, hunt
from support import Daemon

PUTS = 150
#: Seconds between puts: 150 puts take about 4.5 s; the second kill comes
#: after about 2.5 s (each restart takes a few tenths of a second here).
PACE = 0.025
#: The daemon is killed once the sink holds this many records, then this many.
KILL_AT = (40, 90)
#: How long a daemon gets to catch up, start, or stop.
DEADLINE = 15.0

Event = tuple[str, str, str, int]  # type, key, value, mod_revision


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    find_etcd()  # skips, with the reason, before a directory is made
    server = Etcd(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server
    finally:
        server.stop()


class Putter(threading.Thread):
    """Puts ``prefix000`` ... at a steady pace; every tenth put, two keys
    outside the prefix too (the range end itself, and another prefix)."""

    def __init__(self, etcd: Etcd, prefix: str, puts: int = PUTS) -> None:
        super().__init__(daemon=True)
        self.etcd, self.prefix, self.puts = etcd, prefix, puts
        #: (key, value, revision) of each put under the prefix, in order.
        self.made: list[tuple[str, str, int]] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        outside = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)  # the range end
        try:
            for n in range(self.puts):
                if self.halt.is_set():
                    return
                key, value = f"{self.prefix}{n:03d}", f"value {n}"
                self.made.append((key, value, self.etcd.put(key, value)))
                if n % 10 == 5:
                    self.etcd.put(outside, f"outside {n}")
                    self.etcd.put(f"elsewhere/{self.prefix}{n}", f"outside {n}")
                time.sleep(PACE)
        except BaseException as error:  # reported by finish()
            self.error = error

    def finish(self) -> list[tuple[str, str, int]]:
        self.join(timeout=60)
        assert not self.is_alive(), "the puts never finished"
        assert self.error is None, f"a put failed: {self.error!r}"
        assert len(self.made) == self.puts
        return self.made


def _event(record: dict[str, Any]) -> Event:
    kv = record["kv"]
    return (
        record["type"],
        unb64(kv["key"]),
        unb64(kv.get("value", "")),
        int(kv["mod_revision"]),
    )


def _wait(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll until ``predicate`` holds; False at the deadline (the caller's
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _watching(daemon: Daemon) -> None:
    """Until etcd has created the daemon's watch (a put after it is seen)."""
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["not_records"].get("created", 0) >= 1)


def _no_tracebacks(logs: list[str]) -> None:
    for number, log in enumerate(logs, 1):
        assert "Traceback" not in log, f"daemon run {number}:\n{log}"


def _crash_twice_and_finish(
    etcd: Etcd,
    prefix: str,
    start: Callable[[], Daemon],
    read: Callable[[], list[Event]],
) -> tuple[list[tuple[str, str, int]], list[Event], list[str]]:
    """Run the puts across two SIGKILLs; the puts made, the events the sink
    holds at the end, and each daemon run's log."""
    logs: list[str] = []
    daemon = start()
    _watching(daemon)
    putter = Putter(etcd, prefix)
    putter.start()
    try:
        for at in KILL_AT:
            reached = _wait(lambda at=at: len(read()) >= at)
            assert reached, f"never {at} records: {read()}\n{daemon.output()}"
            assert putter.is_alive(), "the puts ended before the kill: not mid-stream"
            assert daemon.process.poll() is None, daemon.output()
            daemon.process.kill()
            daemon.process.wait()
            logs.append(daemon.output())
            daemon = start()  # same arguments, same directory
        made = putter.finish()
        last = made[-1][2]
        _wait(lambda: any(event[3] >= last for event in read()))
        daemon.terminate()
        assert daemon.wait(timeout=DEADLINE) == 0, daemon.output()
    finally:
        putter.halt.set()
        logs.append(daemon.output())
    return made, read(), logs


def _assert_each_put_once(made: list[tuple[str, str, int]], got: list[Event]) -> None:
    outside = [event for event in got if not event[1].startswith(made[0][0][:-3])]
    assert not outside, outside
    revisions = [event[3] for event in got]
    duplicates = sorted({r for r in revisions if revisions.count(r) > 1})
    assert not duplicates, f"revisions delivered twice: {duplicates}"
    missing = sorted({r for _, _, r in made} - set(revisions))
    assert not missing, f"revisions never delivered: {missing}"
    assert got == [("PUT", key, value, revision) for key, value, revision in made]


# -- a file sink: the position in kv.jsonl.state


def _file_events(path: Path) -> list[Event]:
    """The records of a JSON-lines file, up to its last whole line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [_event(json.loads(line)) for line in data.split(b"\n")[:-1]]


@pytest.mark.slow
def test_file_sink_holds_each_put_once_across_two_sigkills(
    etcd: Etcd, tmp_path: Path
) -> None:
    prefix = "file-resume/"
    sink = tmp_path / "kv.jsonl"
    args = (
        *("--url", f"{etcd.url}/v3/watch", "--method", "POST"),
        *("--data", watch_body(prefix), "--resume", "etcd"),
        *("--sink", "file:kv.jsonl"),
    )
    started: list[Daemon] = []

    def start() -> Daemon:
        started.append(Daemon(tmp_path, *args))
        return started[-1]

    try:
        made, got, logs = _crash_twice_and_finish(
            etcd, prefix, start, lambda: _file_events(sink)
        )
    finally:
        for daemon in started:
            daemon.kill()
    _no_tracebacks(logs)
    _assert_each_put_once(made, got)
    state = json.loads((tmp_path / "kv.jsonl.state").read_text())
    assert state == {"position": str(made[-1][2] + 1), "length": sink.stat().st_size}


# -- a Redis list sink: the position in the counter's position:FEED field


def _list_events(redis_server: RedisServer) -> list[Event]:
    reply = redis_server.command("LRANGE", "q", 0, -1)
    assert isinstance(reply, list)
    return [_event(json.loads(item)) for item in reply]  # type: ignore[arg-type]


@pytest.mark.slow
def test_redis_list_holds_each_put_once_across_two_sigkills(
    etcd: Etcd,
    tmp_path: Path,
    redis_server: RedisServer,
    daemons: list[Daemon],
) -> None:
    prefix = "redis-resume/"
    url = f"{etcd.url}/v3/watch"
    args = (
        *("--method", "POST", "--data", watch_body(prefix), "--resume", "etcd"),
        *("--sink", redis_server.url(key="q")),
        *("--counter", redis_server.url(key="sc")),
    )
    made, got, logs = _crash_twice_and_finish(
        etcd,
        prefix,
        lambda: hunt(daemons, tmp_path, url, *args),
        lambda: _list_events(redis_server),
    )
    _no_tracebacks(logs)
    _assert_each_put_once(made, got)
    # The default feed id is the URL without its query.
    position = redis_server.hgetall("sc").get(f"position:{url}")
    assert position == str(made[-1][2] + 1), redis_server.hgetall("sc")


# -- a position etcd compacted away while the daemon was down


@pytest.mark.slow
def test_a_compacted_position_is_said_and_the_feed_goes_on_from_the_compaction(
    etcd: Etcd, tmp_path: Path
) -> None:
    prefix = "compact-resume/"
    sink = tmp_path / "kv.jsonl"
    args = (
        *("--url", f"{etcd.url}/v3/watch", "--method", "POST"),
        *("--data", watch_body(prefix), "--resume", "etcd"),
        *("--sink", "file:kv.jsonl"),
    )
    daemon = Daemon(tmp_path, *args)
    try:
        _watching(daemon)
        before = [etcd.put(f"{prefix}a{n}", f"before {n}") for n in range(3)]
        assert _wait(lambda: len(_file_events(sink)) == 3), daemon.output()
        daemon.terminate()  # a clean stop: the state file holds before[-1] + 1
        assert daemon.wait(timeout=DEADLINE) == 0, daemon.output()
        state = json.loads((tmp_path / "kv.jsonl.state").read_text())
        assert state["position"] == str(before[-1] + 1)

        # While it is down: puts it will never see, then a compaction past them.
        gone = [etcd.put(f"{prefix}b{n}", f"gone {n}") for n in range(4)]
        compact = etcd.put("elsewhere/compact", "x")
        status, answer = post(
            f"{etcd.url}/v3/kv/compaction", json.dumps({"revision": compact})
        )
        assert status == 200, answer

        daemon = Daemon(tmp_path, *args)
        logged = f"etcd compacted revisions before {compact}"
        assert _wait(lambda: logged in daemon.output()), daemon.output()
        after = [
            (f"{prefix}c{n}", f"after {n}", etcd.put(f"{prefix}c{n}", f"after {n}"))
            for n in range(5)
        ]
        assert _wait(lambda: len(_file_events(sink)) >= 3 + 5), daemon.output()
        daemon.terminate()
        assert daemon.wait(timeout=DEADLINE) == 0, daemon.output()
    finally:
        daemon.kill()
    log = daemon.output()
    assert "Traceback" not in log, log
    lost = len(range(before[-1] + 1, compact))
    assert f"{logged}: {lost} revisions from {before[-1] + 1} on are gone" in log, log
    got = _file_events(sink)
    assert [event[3] for event in got[:3]] == before
    assert not {event[3] for event in got} & set(gone)
    assert got[3:] == [("PUT", key, value, revision) for key, value, revision in after]
    state = json.loads((tmp_path / "kv.jsonl.state").read_text())
    assert state == {"position": str(after[-1][2] + 1), "length": sink.stat().st_size}
