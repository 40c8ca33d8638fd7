"""Redis sinks and the shared counter, against a real redis-server and real daemons."""

from __future__ import annotations

import itertools
import json
import re
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from redis_support import RedisServer, Techies, hunt, list_ids, wait_until
from support import sleep, wait_for

from tidehunter_tx import Hunter
from tidehunter_tx.redis import (
    RedisGate,
    RedisStateCounter,
    connect,
    parse_redis_spec,
)


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A server whose data survives SIGKILL (appendfsync always), for outages."""
    with RedisServer(persistent=True) as server:
        yield server


def test_list_sink_exact_limit_and_counter_fields(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=120&chunk=1000",
        "--limit",
        "2500",
        "--sink",
        redis_server.url(key="q"),
        "--counter",
        redis_server.url(key="sc"),
    )
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert list_ids(redis_server, "q") == list(range(2500))
    # The limit ends the shared run as techies' stop() does: a consumer's
    # `while sc.started:` ends, and the next run starts afresh.
    fields = redis_server.hgetall("sc")
    assert (fields["state"], fields["count"], fields["total"], fields["limit"]) == (
        "0",
        "0",
        "2500",
        "2500",
    )


def test_a_run_after_a_finished_shared_run_is_a_new_run(
    firehose_process, redis_server, tmp_path, daemons
):
    for index in range(2):
        daemon = hunt(
            daemons,
            tmp_path / f"run{index}",
            f"{firehose_process}/firehose?size=80&start={index * 1000}",
            "--limit",
            "300",
            "--sink",
            redis_server.url(key="q"),
            "--counter",
            redis_server.url(key="sc"),
        )
        assert daemon.wait(timeout=30) == 0, daemon.output()
    assert list_ids(redis_server, "q") == list(range(300)) + list(range(1000, 1300))
    assert redis_server.hgetall("sc")["total"] == "600"


def test_joining_a_run_left_on_at_its_limit_says_so_and_ends_it(
    firehose_process, redis_server, tmp_path, daemons
):
    # What an older hunter left behind: the run on, its count at the limit.
    redis_server.command("HSET", "sc", "state", 1, "count", 100, "limit", 100)
    args = ["--limit", "100", "--sink", redis_server.url(key="q")]
    args += ["--counter", redis_server.url(key="sc")]
    url = f"{firehose_process}/firehose?size=80"
    stale = hunt(daemons, tmp_path / "stale", url, *args)
    assert stale.wait(timeout=30) == 0, stale.output()
    assert "limit reached (100 of 100)" in stale.output()
    assert "run again to start a new run" in stale.output()
    assert redis_server.command("LLEN", "q") == 0
    assert redis_server.hgetall("sc")["state"] == "0"
    again = hunt(daemons, tmp_path / "again", url, *args)
    assert again.wait(timeout=30) == 0, again.output()
    assert list_ids(redis_server, "q") == list(range(100))


class BarrierFeed:
    """JSON lines that flow only once ``parties`` clients are connected.

    So hunters started one after another all join the shared run before any
    of them can finish it.  The path's ``start`` query value is the first id.
    """

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        feed = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.readline().decode()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                match = re.search(r"start=(\d+)", request)
                first = int(match.group(1)) if match else 0
                try:
                    feed.barrier.wait()
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    for n in itertools.count(first):
                        self.wfile.write(b'{"id":%d}\n' % n)
                except (OSError, threading.BrokenBarrierError):
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_three_hunters_share_one_exact_quota(
    firehose_process, redis_server, tmp_path, daemons
):
    starts = (0, 1_000_000, 2_000_000)
    feed = BarrierFeed(len(starts))
    group = [
        hunt(
            daemons,
            tmp_path / f"h{index}",
            f"{feed.url}/feed?start={start}",
            "--limit",
            "5000",
            "--sink",
            redis_server.url(key="q"),
            "--counter",
            redis_server.url(key="sc"),
        )
        for index, start in enumerate(starts)
    ]
    for daemon in group:
        assert daemon.wait(timeout=60) == 0, daemon.output()
    feed.close()
    ids = list_ids(redis_server, "q")
    assert len(ids) == 5000
    assert len(set(ids)) == 5000  # no duplicates
    for start in starts:  # each hunter's records are in its stream's order
        own = [i for i in ids if start <= i < start + 1_000_000]
        assert own == list(range(start, start + len(own)))
    fields = redis_server.hgetall("sc")
    assert (fields["state"], fields["total"]) == ("0", "5000")


def test_consumer_off_switch_reaches_a_silent_hunter_within_a_second(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?stall_after=3&keepalive=0.2",
        "--no-reconnect",
        "--sink",
        redis_server.url(key="q"),
        "--counter",
        redis_server.url(key="sc"),
    )
    wait_until(lambda: redis_server.command("LLEN", "q") == 3)
    time.sleep(0.3)  # the stream is silent now but for keep-alives
    switched = time.monotonic()
    redis_server.command("HSET", "sc", "state", "0")  # what techies' stop() does
    assert daemon.wait(timeout=5) == 0
    assert time.monotonic() - switched < 1.5
    # The stop is never undone by a push, and count moved on only when admitted.
    assert redis_server.hgetall("sc")["state"] == "0"


def test_set_limit_applies_to_every_hunter_sharing_the_counter(
    firehose_process, redis_server, tmp_path, daemons
):
    group = [
        hunt(
            daemons,
            tmp_path / f"h{index}",
            f"{firehose_process}/firehose?size=80&rate=500&start={index * 10**6}",
            "--sink",
            redis_server.url(key="q"),
            "--counter",
            redis_server.url(key="sc"),
        )
        for index in range(2)
    ]
    group[0].wait_until_up()
    group[1].wait_until_up()
    wait_until(lambda: int(redis_server.hgetall("sc").get("count", 0)) > 100)
    target = int(redis_server.hgetall("sc")["count"]) + 2000  # ahead of ctl
    result = group[0].ctl("limit", str(target))
    assert result.returncode == 0, result.stderr
    for daemon in group:
        assert daemon.wait(timeout=20) == 0, daemon.output()
    assert redis_server.command("LLEN", "q") == target


def test_stream_sink_exact_and_trimmed(
    firehose_process, redis_server, tmp_path, daemons
):
    exact = hunt(
        daemons,
        tmp_path / "a",
        f"{firehose_process}/firehose?size=100",
        "--limit",
        "3000",
        "--sink",
        redis_server.url(key="s", scheme="redis+stream"),
        "--counter",
        redis_server.url(key="sc_a"),
    )
    assert exact.wait(timeout=30) == 0, exact.output()
    assert redis_server.command("XLEN", "s") == 3000
    first = redis_server.command("XRANGE", "s", "-", "+", "COUNT", 1)
    assert isinstance(first, list)
    fields = first[0][1]  # type: ignore[index]
    assert fields[0] == b"data" and json.loads(fields[1])["id"] == 0  # type: ignore[index]

    trimmed = hunt(
        daemons,
        tmp_path / "b",
        f"{firehose_process}/firehose?size=100",
        "--limit",
        "5000",
        "--sink",
        redis_server.url(key="t", scheme="redis+stream") + "&maxlen=1000",
        "--counter",
        redis_server.url(key="sc_b"),
    )
    assert trimmed.wait(timeout=30) == 0, trimmed.output()
    length = redis_server.command("XLEN", "t")
    assert isinstance(length, int) and 1000 <= length < 5000
    assert redis_server.hgetall("sc_b")["total"] == "5000"


def test_file_sink_with_shared_counter_is_exact_across_hunters(
    firehose_process, redis_server, tmp_path, daemons
):
    outs = [tmp_path / f"out{index}.jsonl" for index in range(2)]
    # Both join before either can finish the run (a hunter started after the
    # run ended would start a new one).
    feed = BarrierFeed(len(outs))
    group = [
        hunt(
            daemons,
            tmp_path / f"h{index}",
            f"{feed.url}/feed?start={index * 1_000_000}",
            "--limit",
            "3000",
            "--sink",
            f"file:{out}",
            "--counter",
            redis_server.url(key="sc"),
        )
        for index, out in enumerate(outs)
    ]
    for daemon in group:
        assert daemon.wait(timeout=30) == 0, daemon.output()
    feed.close()
    written = [len(out.read_text().splitlines()) for out in outs]
    assert sum(written) == 3000


def test_no_loss_through_a_redis_outage(
    firehose_process, durable_redis, tmp_path, daemons
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100&rate=3000",
        "--limit",
        "6000",
        "--sink",
        durable_redis.url(key="q"),
        "--counter",
        durable_redis.url(key="sc"),
    )
    wait_until(lambda: (durable_redis.command("LLEN", "q") or 0) > 500)
    durable_redis.kill()
    time.sleep(1.0)  # an outage of a second while the feed keeps coming
    durable_redis.restart()
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert list_ids(durable_redis, "q") == list(range(6000))
    assert durable_redis.hgetall("sc")["total"] == "6000"


def test_sigterm_during_outage_spills_what_redis_never_confirmed(
    firehose_process, durable_redis, tmp_path, daemons
):
    spill = tmp_path / "spill.jsonl"
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100&rate=3000",
        "--sink",
        durable_redis.url(key="q"),
        "--counter",
        durable_redis.url(key="sc"),
        "--spill-file",
        str(spill),
    )
    wait_until(lambda: (durable_redis.command("LLEN", "q") or 0) > 300)
    durable_redis.kill()
    time.sleep(0.5)  # records keep arriving while Redis is away
    daemon.terminate()
    assert daemon.wait(timeout=20) == 0, daemon.output()
    assert str(spill) in daemon.output()
    entries = [json.loads(line) for line in spill.read_text().splitlines()]
    assert {entry["key"] for entry in entries} == {"q"}
    spilled = [json.loads(entry["data"])["id"] for entry in entries]
    assert spilled
    durable_redis.restart()
    pushed = list_ids(durable_redis, "q")
    # Pushed then spilled: one unbroken run of ids (a batch in flight at the
    # crash may be in both, never in neither).
    assert pushed == list(range(len(pushed)))
    assert sorted(set(pushed + spilled)) == list(range(max(pushed + spilled) + 1))


def test_techies_reads_what_the_daemon_pushed_in_order(
    firehose_process, redis_server, tmp_path, daemons, techies_python
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=80",
        "--limit",
        "200",
        "--sink",
        redis_server.url(key="demo_q"),
        "--counter",
        redis_server.url(key="demo_sc"),
    )
    assert daemon.wait(timeout=30) == 0, daemon.output()
    techies = Techies(techies_python, redis_server.port)
    out = techies(
        """
        import json
        q = techies.Queue(key="demo_q", host=HOST, port=PORT)
        sc = techies.StateCounter(key="demo_sc", host=HOST, port=PORT)
        ids = [json.loads(q.get())["id"] for _ in range(200)]
        print(json.dumps({"ids": ids, "total": int(sc.get_total()),
                          "started": bool(sc.started)}))
        """
    )
    seen = json.loads(out)
    assert seen["ids"] == list(range(200))
    # The limit ended the shared run: the seed's `while sc.started:` ends.
    assert (seen["total"], seen["started"]) == (200, False)


def test_techies_stop_switches_the_daemon_off(
    firehose_process, redis_server, tmp_path, daemons, techies_python
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=80&rate=500",
        "--sink",
        redis_server.url(key="demo_q"),
        "--counter",
        redis_server.url(key="demo_sc"),
    )
    wait_until(lambda: (redis_server.command("LLEN", "demo_q") or 0) > 50)
    Techies(techies_python, redis_server.port)(
        """
        techies.StateCounter(key="demo_sc", host=HOST, port=PORT).stop()
        """
    )
    assert daemon.wait(timeout=5) == 0, daemon.output()
    settled = redis_server.command("LLEN", "demo_q")
    time.sleep(0.5)
    assert redis_server.command("LLEN", "demo_q") == settled  # nothing after stop
    assert redis_server.hgetall("demo_sc")["state"] == "0"


def test_restarted_daemon_resumes_an_event_stream_from_the_stored_id(
    firehose_process, redis_server, tmp_path, daemons
):
    args = (
        f"{firehose_process}/firehose?format=sse&count=2000&rate=1500&size=60",
        "--framing",
        "sse",
        "--limit",
        "2000",
        "--sink",
        redis_server.url(key="q"),
        "--counter",
        redis_server.url(key="sc"),
    )
    first = hunt(daemons, tmp_path / "first", *args)
    wait_until(lambda: (redis_server.command("LLEN", "q") or 0) > 300)
    first.terminate()
    assert first.wait(timeout=10) == 0, first.output()
    # Kept under the feed's name: its URL without credentials or query.
    stored = redis_server.hgetall("sc")[f"position:{firehose_process}/firehose"]
    assert int(stored) == redis_server.command("LLEN", "q") - 1

    second = hunt(daemons, tmp_path / "second", *args)
    assert second.wait(timeout=30) == 0, second.output()
    assert list_ids(redis_server, "q") == list(range(2000))
    stats = json.loads(_get(f"{firehose_process}/stats"))
    assert stored in stats["last_event_ids"]


def _get(url: str) -> bytes:
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.read()  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_halt_ends_a_run_whose_redis_never_answers(firehose):
    from redis_support import free_port

    spec = parse_redis_spec(f"redis://127.0.0.1:{free_port()}/0?key=sc")
    connection = connect(spec)
    counter = RedisStateCounter(connection, spec.key)
    h = Hunter(f"{firehose}/firehose?size=60", sc=counter)
    run = h.tide_on(limit=10)
    await sleep(0.3)  # Redis is away: the start is waiting
    started = time.monotonic()
    h.halt()
    await run
    assert time.monotonic() - started < 1.0
    counter.close()
    connection._factory.stopTrying()


@pytest_twisted.ensureDeferred
async def test_shared_limit_reached_elsewhere_ends_a_quiet_hunter(
    firehose, redis_server
):
    spec = parse_redis_spec(redis_server.url(key="sc"))
    target = parse_redis_spec(redis_server.url(key="q"))
    hunters, connections = [], []
    for url in (f"{firehose}/firehose?size=60", f"{firehose}/firehose?rate=1&size=60"):
        connection = connect(spec)
        connections.append(connection)
        counter = RedisStateCounter(connection, spec.key)
        gate = RedisGate(counter, target=target)
        hunters.append(Hunter(url, gate=gate))
    busy, quiet = hunters
    quiet_run = quiet.tide_on(limit=100)
    await wait_for(lambda: quiet.sc.started)
    await busy.tide_on(limit=100)
    started = time.monotonic()
    await quiet_run
    assert time.monotonic() - started < 1.5
    assert redis_server.command("LLEN", "q") == 100
    for hunter, connection in zip(hunters, connections, strict=True):
        hunter.sc.close()  # type: ignore[attr-defined]
        await connection.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_counter_with_a_slow_local_queue_keeps_flowing(
    firehose, redis_server
):
    spec = parse_redis_spec(redis_server.url(key="sc"))
    connection = connect(spec)
    counter = RedisStateCounter(connection, spec.key)
    h = Hunter(
        f"{firehose}/firehose?size=60", sc=counter, high_watermark=50, low_watermark=10
    )
    run = h.tide_on(limit=3000)
    got = []
    while len(got) < 3000:
        got.append(await h.q.get())
        if len(got) % 200 == 0:
            await sleep(0.01)  # a consumer slower than the stream
    await run
    assert [json.loads(r)["id"] for r in got] == list(range(3000))
    counter.close()
    await connection.disconnect()


def test_a_redis_sink_with_a_memory_counter_leaves_only_the_list(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100",
        "--limit",
        "3000",
        "--sink",
        redis_server.url(key="q"),
    )
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert list_ids(redis_server, "q") == list(range(3000))
    assert redis_server.command("KEYS", "*") == [b"q"]


def _net_input_bytes(server: RedisServer) -> int:
    info = server.command("INFO", "stats")
    assert isinstance(info, bytes)
    for line in info.decode().splitlines():
        if line.startswith("total_net_input_bytes:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_net_input_bytes in INFO")


def test_a_redis_counter_with_a_file_sink_sends_counts_not_records(
    firehose_process, redis_server, tmp_path, daemons
):
    before = _net_input_bytes(redis_server)
    out = tmp_path / "out.jsonl"
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=200",
        "--limit",
        "20000",
        "--sink",
        f"file:{out}",
        "--counter",
        redis_server.url(key="sc"),
    )
    assert daemon.wait(timeout=30) == 0, daemon.output()
    lines = out.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(20000))
    assert redis_server.hgetall("sc")["total"] == "20000"
    sent = _net_input_bytes(redis_server) - before
    assert sent < 20000 * 200 / 10, f"{sent} bytes went to Redis for 4 MB of records"


@pytest_twisted.ensureDeferred
async def test_a_flushed_script_cache_is_reloaded_and_nothing_is_lost(
    firehose, redis_server
):
    spec = parse_redis_spec(redis_server.url(key="sc"))
    target = parse_redis_spec(redis_server.url(key="q"))
    counter = RedisStateCounter(connect(spec), spec.key)
    h = Hunter(
        f"{firehose}/firehose?size=60&rate=4000", gate=RedisGate(counter, target=target)
    )
    run = h.tide_on(limit=2000)
    await wait_for(lambda: h.delivered >= 200)
    assert redis_server.command("SCRIPT", "FLUSH") == "OK"
    await run
    await h.close()
    assert list_ids(redis_server, "q") == list(range(2000))


@pytest_twisted.ensureDeferred
async def test_a_stream_that_ends_at_the_limit_is_not_reconnected(
    firehose, redis_server
):
    # Redis answers after the body has ended: the run waits for those answers
    # (they reach the limit) instead of reconnecting for records it cannot use.
    spec = parse_redis_spec(redis_server.url(key="sc"))
    counter = RedisStateCounter(connect(spec), spec.key)
    h = Hunter(f"{firehose}/firehose?size=60&count=3000", sc=counter, reconnect=True)
    await h.tide_on(limit=3000)
    await h.close()
    assert len(h.q.pending) == 3000
    assert h.status()["reconnects"] == 0
    assert redis_server.hgetall("sc")["total"] == "3000"
