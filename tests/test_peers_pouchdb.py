"""A real pouchdb-server (npm, ``--in-memory``): its continuous ``_changes`` feed.

pouchdb-server answers ``Accept-Encoding: gzip`` on a continuous feed through
express's ``compression``: a 10-byte gzip header, then nothing while the rows
and heartbeats wait in the compressor.  The daemon's default
``--compression auto`` must notice (no decoded byte for 5 s), ask again
without compression, and read the feed; ``--compression identity`` reads it at
once.  The heartbeats (a bare ``\\n`` every second) are keep-alives, never
records.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peer_support import PEERS, Peer, find_peer
from support import Daemon

pytestmark = [pytest.mark.peers, pytest.mark.slow]

#: Docs in the db before the daemon starts, and after it has seen heartbeats.
BEFORE, AFTER = 10, 10
LIMIT = BEFORE + AFTER


def _request(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _answers(port: int) -> bool:
    try:
        welcome = _request("GET", f"http://127.0.0.1:{port}/")
    except OSError:
        return False
    return "express-pouchdb" in welcome


@pytest.fixture(scope="module")
def pouchdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One pouchdb-server for the module (it takes seconds to start); its URL.

    It writes config.json and log.txt where it runs: a directory of its own.
    """
    binary = find_peer(
        "pouchdb-server", PEERS / "node_modules" / ".bin" / "pouchdb-server"
    )
    workdir = tmp_path_factory.mktemp("pouchdb")
    server = Peer(
        "pouchdb-server",
        workdir,
        lambda port: [
            binary,
            *("--in-memory", "--no-color", "--host", "127.0.0.1"),
            *("--port", str(port)),
        ],
        _answers,
    ).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _gzip_answer(url: str, seconds: float) -> tuple[bytes, bytes]:
    """Ask ``url`` for gzip on a bare socket; what came in ``seconds`` (head, body)."""
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\n"
            "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n".encode()
        )
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def _put_docs(db: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        reply = _request("PUT", f"{db}/doc{n:03d}", {"n": n})
        assert reply.get("ok") is True, reply


def _stream(
    pouchdb: str,
    tmp_path: Path,
    name: str,
    *args: str,
    meanwhile: Any = None,
) -> dict[str, Any]:
    """BEFORE docs, the daemon on the feed, AFTER docs once it has counted
    heartbeats; the daemon must stop at LIMIT.  Returns what it showed.
    ``meanwhile(feed_url)`` runs once the daemon is up."""
    db = f"{pouchdb}/{name}"
    assert _request("PUT", db) == {"ok": True}
    _put_docs(db, 0, BEFORE)
    out = tmp_path / "changes.jsonl"
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    feed = f"{db}/_changes?feed=continuous&heartbeat=1000&since=0"
    started = time.monotonic()
    daemon = Daemon(
        workdir,
        "--url",
        feed,
        "--limit",
        str(LIMIT),
        "--sink",
        f"file:{out}",
        *args,
    )
    try:
        daemon.wait_until_up()
        if meanwhile is not None:
            meanwhile(feed)
        # The rows already there, then two heartbeats on the same feed.
        status = daemon.wait_for(
            lambda s: s["count"] == BEFORE and s["keepalives"] >= 2, timeout=30
        )
        first_rows_after = time.monotonic() - started
        _put_docs(db, BEFORE, AFTER)
        assert daemon.wait(timeout=30) == 0, daemon.output()
    finally:
        daemon.kill()
    lines = out.read_text().splitlines()
    assert len(lines) == LIMIT, lines
    changes = [json.loads(line) for line in lines]
    assert [change["id"] for change in changes] == [f"doc{n:03d}" for n in range(LIMIT)]
    assert [change["seq"] for change in changes] == list(range(1, LIMIT + 1))
    assert all(change["changes"][0]["rev"].startswith("1-") for change in changes)
    log = daemon.output()
    assert f"{LIMIT} records delivered (limit {LIMIT})" in log, log
    final = [line for line in log.splitlines() if f"{LIMIT} records delivered" in line]
    keepalives = int(final[-1].split(" keep-alives")[0].rsplit(" ", 1)[-1])
    assert keepalives >= 2, final[-1]
    return {"status": status, "log": log, "seconds": first_rows_after}


def test_auto_compression_notices_the_buffering_gzip_and_asks_again_without(
    pouchdb, tmp_path
):
    def buffered(feed: str) -> None:
        # What the daemon is up against (asked while it waits its 5 s): the
        # rows are there and heartbeats are due every second, yet in 2.5 s
        # the gzip body is one chunk, the 10-byte gzip header, and no more.
        head, body = _gzip_answer(feed, 2.5)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"\r\ncontent-encoding: gzip" in head.lower(), head
        assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
        assert body[:3] == b"a\r\n" and body[3:6] == b"\x1f\x8b\x08", body
        assert body == body[:13] + b"\r\n", body

    shown = _stream(pouchdb, tmp_path, "auto", meanwhile=buffered)
    status, log = shown["status"], shown["log"]
    assert "gzip body gave no byte in 5 s" in log, log
    assert "asking again without compression" in log, log
    assert status["reconnects_by_cause"] == {"compression": 1}, status
    assert shown["seconds"] >= 5, shown["seconds"]


def test_identity_compression_reads_the_feed_without_the_5_s_wait(pouchdb, tmp_path):
    shown = _stream(pouchdb, tmp_path, "identity", "--compression", "identity")
    status, log = shown["status"], shown["log"]
    assert "gzip body" not in log and "without compression" not in log, log
    assert status["reconnects"] == 0, status
    assert status["reconnects_by_cause"] == {}, status
