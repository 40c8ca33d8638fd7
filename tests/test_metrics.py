"""Prometheus metrics: ``Hunter.metrics()`` and a daemon's ``--metrics``.

Scrapes are parsed with ``prometheus_client.parser`` and compared with
``Status``: in process, both are read in the same reactor turn and must be
equal field by field; from a real daemon, both are read while it is paused
(nothing moves), over HTTP and over AMP, as an operator would.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis_support import RedisServer, free_port, hunt
from support import Daemon, wait_for
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tidehunter_tx import Hunter
from tidehunter_tx.metrics import MAX_METRICS_CONNECTIONS, STATES

#: metric sample name -> the Status field it shows.
SAME_AS_STATUS = {
    "tidehunter_records_total": "records",
    "tidehunter_read_records_total": "read",
    "tidehunter_received_bytes_total": "bytes",
    "tidehunter_keepalives_total": "keepalives",
    "tidehunter_truncated_records_total": "truncated",
    "tidehunter_dropped_records_total": "dropped",
    "tidehunter_spilled_records_total": "spilled",
    "tidehunter_lost_records_total": "lost",
    "tidehunter_stalls_total": "stalls",
    "tidehunter_pauses_total": "pauses",
    "tidehunter_paused_seconds_total": "paused_seconds",
    "tidehunter_backoff_seconds": "backoff",
    "tidehunter_retry_in_seconds": "retry_in",
    "tidehunter_in_flight_records": "in_flight",
    "tidehunter_queued_records": "queued",
    "tidehunter_counter_count": "count",
    "tidehunter_counter_limit": "limit",
    "tidehunter_counter_total": "total",
    "tidehunter_last_record_timestamp_seconds": "last_record_at",
    "tidehunter_connected_since_timestamp_seconds": "connected_since",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def plain(found: dict[Any, float], name: str) -> float | None:
    return found.get((name, ()))


#: Fields that move with the clock alone: a scrape read between two
#: Status replies lies between their values.
MOVING = {"paused_seconds", "retry_in"}


def assert_same_as_status(
    found: dict[Any, float], status: dict[str, Any], after: dict[str, Any] | None = None
) -> None:
    """``found`` equals ``status`` (read just before it; ``after``, just after)."""
    after = status if after is None else after
    for name, field in SAME_AS_STATUS.items():
        value = status[field]
        if field in MOVING:
            low, high = sorted((value, after[field]))
            assert low - 1e-9 <= plain(found, name) <= high + 1e-9, (name, field)
        elif value is None:
            assert plain(found, name) is None, name
        else:
            assert after[field] == value, field  # nothing else moved
            assert plain(found, name) == pytest.approx(value, abs=1e-6), (name, field)
    assert plain(found, "tidehunter_skipped_records_total") is None
    skipped = found[("tidehunter_skipped_records_total", (("reason", "oversize"),))]
    assert skipped == status["skipped"]
    causes = {
        labels[0][1]: value
        for (name, labels), value in found.items()
        if name == "tidehunter_reconnects_total"
    }
    assert causes == status["reconnects_by_cause"]
    assert sum(causes.values()) == status["reconnects"]
    reasons = {
        labels[0][1]: value
        for (name, labels), value in found.items()
        if name == "tidehunter_not_records_total"
    }
    assert reasons == status["not_records"]
    states = {
        labels[0][1]: value
        for (name, labels), value in found.items()
        if name == "tidehunter_state"
    }
    assert states == {state: float(state == status["state"]) for state in STATES}
    connected = status["connected_since"] is not None
    assert plain(found, "tidehunter_connected") == float(connected)
    assert plain(found, "tidehunter_paused") == float(
        status["paused_since"] is not None
    )
    assert plain(found, "tidehunter_waiting") == float(status["waiting"] is not None)
    info = [labels for (name, labels) in found if name == "tidehunter_info"]
    assert info == [(("url", status["url"]),)]


# -- in process: the same reactor turn, every field equal


@pytest_twisted.ensureDeferred
async def test_a_scrape_equals_status_in_the_same_turn(firehose: str) -> None:
    # drop_every breaks the stream (reconnects by cause); an unread queue with
    # a small watermark pauses the socket (paused, seconds paused).
    url = f"{firehose}/firehose?rate=2000&drop_every=40"
    hunter = Hunter(url, reconnect=True, high_watermark=100, low_watermark=50)
    registry = CollectorRegistry()
    registry.register(hunter.metrics())
    run = hunter.tide_on(limit=10_000)
    try:
        await wait_for(lambda: hunter.status()["reconnects"] >= 2, timeout=15)
        await wait_for(lambda: hunter.status()["paused_since"] is not None)
        status = hunter.status()
        found = samples(generate_latest(registry).decode())
        assert_same_as_status(found, status, hunter.status())
        assert status["queued"] >= 100 and status["pauses"] >= 1
        assert plain(found, "tidehunter_paused") == 1.0
        assert status["reconnects_by_cause"].get("network", 0) >= 2
        # No Redis here: no Redis metrics.
        assert not any(name.startswith("tidehunter_redis") for name, _ in found)
    finally:
        hunter.tide_off()
        await run
    found, status = samples(generate_latest(registry).decode()), hunter.status()
    assert_same_as_status(found, status)
    assert status["state"] == "stopped"


class _EchoFeed(Resource):
    """A feed that streams a few lines and ignores its query (the emulator
    refuses options it does not know, such as an api_key)."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.write(b"".join(b'{"n": %d}\n' % n for n in range(5)))
        return NOT_DONE_YET


@pytest.fixture
def echo_feed() -> Iterator[str]:
    port = reactor.listenTCP(0, Site(_EchoFeed()), interface="127.0.0.1")
    try:
        yield f"127.0.0.1:{port.getHost().port}"
    finally:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_no_label_or_value_carries_a_credential(echo_feed: str) -> None:
    password, key = "pw-Secret-4711", "KEY-abcdef-123456"
    url = f"http://alice:{password}@{echo_feed}/feed/v1?api_key={key}&track=x"
    hunter = Hunter(url, headers={"X-Api-Key": [key]})
    registry = CollectorRegistry()
    registry.register(hunter.metrics(labels={"feed": "echo"}))
    run = hunter.tide_on(limit=5)
    await run
    text = generate_latest(registry).decode()
    for secret in (password, key, "alice", "api_key", "track"):
        assert secret not in text
    found = samples(text)
    assert found[("tidehunter_records_total", (("feed", "echo"),))] == 5
    info = [labels for (name, labels) in found if name == "tidehunter_info"]
    assert info == [(("feed", "echo"), ("url", f"http://{echo_feed}/feed/v1"))]


# -- a real daemon: --metrics over HTTP, Status over AMP


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def paused_daemon(daemon: Daemon) -> dict[str, Any]:
    """Pause it and wait until nothing moves: the read in flight has landed."""
    daemon.wait_until_up()
    assert daemon.ctl("pause").returncode == 0
    daemon.wait_for(lambda s: s["state"] == "paused")
    before = daemon.status()
    while True:
        time.sleep(0.1)
        now = daemon.status()
        if now["read"] == before["read"] and now["bytes"] == before["bytes"]:
            return now
        before = now


def assert_daemon_agrees(port: int, daemon: Daemon) -> dict[Any, float]:
    status = paused_daemon(daemon)
    found = samples(scrape(port))
    assert_same_as_status(found, status, daemon.status())
    assert found[("tidehunter_state", (("tidehunter_state", "paused"),))] == 1
    assert plain(found, "tidehunter_paused") == 1
    return found


def test_daemon_serves_metrics_that_agree_with_status(
    firehose_process: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"{firehose_process}/firehose?rate=2000&drop_every=300"
    daemon = Daemon(
        tmp_path,
        *("--url", url, "--sink", "file:out.jsonl", "--limit", "100000"),
        *("--metrics", f"tcp:{port}:interface=127.0.0.1"),
    )
    try:
        daemon.wait_until_up()
        daemon.wait_for(lambda s: s["reconnects"] >= 1)
        found = assert_daemon_agrees(port, daemon)
        assert plain(found, "tidehunter_records_total") >= 300
        # The process's own numbers come along (memory for alerts).
        assert plain(found, "process_resident_memory_bytes") > 10_000_000
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert missing.value.code == 404
        daemon.terminate()
        assert daemon.wait() == 0, daemon.output()
    finally:
        daemon.kill()
    log = daemon.output()
    assert "Traceback" not in log
    assert "GET /metrics" not in log  # no log line per scrape


def test_redis_sink_metrics_show_batches_and_push_latency(
    firehose_process: str,
    tmp_path: Path,
    redis_server: RedisServer,
    daemons: list[Daemon],
) -> None:
    port = free_port()
    daemon = hunt(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?rate=3000",
        *("--sink", redis_server.url(key="q"), "--counter", redis_server.url(key="sc")),
        *("--metrics", f"tcp:{port}:interface=127.0.0.1"),
    )
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["records"] >= 500)
    found = assert_daemon_agrees(port, daemon)
    assert plain(found, "tidehunter_redis_batches_in_flight") == 0  # paused, settled
    calls = plain(found, "tidehunter_redis_push_duration_seconds_count")
    assert calls is not None and calls >= 1
    assert plain(found, "tidehunter_redis_push_duration_seconds_sum") > 0
    buckets = [
        (float(labels[0][1]), value)
        for (name, labels), value in found.items()
        if name == "tidehunter_redis_push_duration_seconds_bucket"
    ]
    counts = [value for _, value in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == calls  # cumulative, +Inf last
    # Redis holds what the metrics say was delivered.
    assert redis_server.command("LLEN", "q") == plain(found, "tidehunter_records_total")


def test_a_taken_metrics_port_refuses_to_start(
    firehose_process: str, tmp_path: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        daemon = Daemon(
            tmp_path,
            *("--url", f"{firehose_process}/firehose", "--sink", "file:out.jsonl"),
            *("--metrics", f"tcp:{port}:interface=127.0.0.1"),
        )
        try:
            assert daemon.wait() == 1
        finally:
            daemon.kill()
    finally:
        taken.close()
    log = daemon.output()
    assert f"metrics port 127.0.0.1:{port} is taken" in log, log
    assert "Traceback" not in log
    assert (
        not (tmp_path / "out.jsonl").exists()
        or not (tmp_path / "out.jsonl").read_bytes()
    )


def test_idle_connections_cannot_take_the_metrics_port(
    firehose_process: str, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Daemon(
        tmp_path,
        *("--url", f"{firehose_process}/firehose?rate=100", "--sink", "file:o"),
        *("--metrics", f"tcp:{port}:interface=127.0.0.1"),
    )
    idle: list[socket.socket] = []
    try:
        daemon.wait_until_up()
        for _ in range(MAX_METRICS_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # Wait until the daemon holds them all, then one more is closed at once.
        deadline = time.monotonic() + 10
        while True:
            extra = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            try:
                closed = extra.recv(1) == b""
            except TimeoutError:
                closed = False  # kept: the daemon had not taken them all yet
            finally:
                extra.close()
            if closed:
                break
            assert time.monotonic() < deadline, "the extra connection was kept"
        for connection in idle:
            connection.close()
        # Their sockets given back, a scrape is served again.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert "tidehunter_records_total" in scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "never served again"
                time.sleep(0.05)
        assert daemon.status()["state"] == "streaming"
    finally:
        for connection in idle:
            connection.close()
        daemon.kill()
