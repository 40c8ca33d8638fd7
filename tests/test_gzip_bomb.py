"""gzip bombs: inflated a step at a time, never past a full sink, memory bounded."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import Daemon, HostileServer, rss_bytes, sleep, wait_for

from tidehunter_tx import Hunter
from tidehunter_tx._inflate import INFLATE_STEP

LINE = b'{"id": 7, "text": "the same record, again and again"}\n'
MIB = 1024 * 1024
BLOCK = LINE * (MIB // len(LINE))


def gzip_of(*parts: tuple[bytes, int]) -> bytes:
    """One gzip member holding each (chunk, times) in turn."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(chunk) for chunk, times in parts for _ in range(times)]
    return b"".join(out) + compressor.flush()


class GzipFeed:
    """Answers one request with a gzip body, sent once ``go`` is set; later
    connections get nothing.  The connection stays open after the body, so
    the reader's state can be read before anything reconnects."""

    def __init__(self, body: bytes, *, wait_for_go: bool = False) -> None:
        self.body = body
        self.answered = threading.Event()
        self.go = threading.Event()
        if not wait_for_go:
            self.go.set()
        self.server = HostileServer(self.handle)
        self.url = f"{self.server.url}/feed"

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if self.answered.is_set():
            await reader.read()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        self.answered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait)
        writer.write(self.body)
        await writer.drain()
        await reader.read()


@pytest.fixture
def gzip_feed() -> Iterator[Callable[..., GzipFeed]]:
    feeds: list[GzipFeed] = []

    def make(body: bytes, **kwargs: Any) -> GzipFeed:
        feeds.append(GzipFeed(body, **kwargs))
        return feeds[-1]

    yield make
    for feed in feeds:
        feed.go.set()
        feed.server.close()


@pytest_twisted.ensureDeferred
async def test_a_bomb_pauses_at_the_watermark_and_every_record_arrives(
    gzip_feed: Callable[..., GzipFeed],
) -> None:
    blocks = 16
    total = blocks * (MIB // len(LINE))
    feed = gzip_feed(gzip_of((BLOCK, blocks)))
    h = Hunter(feed.url, high_watermark=1000)
    run = h.tide_on(limit=total)
    await wait_for(lambda: h.stats.pauses >= 1)
    one_step = INFLATE_STEP // len(LINE) + 1
    # Paused: nothing more is inflated, however long nobody reads.
    held = len(h.q.pending)  # type: ignore[attr-defined]
    for _ in range(20):
        assert len(h.q.pending) <= 1000 + one_step  # type: ignore[attr-defined]
        await sleep(0.01)
    assert len(h.q.pending) == held  # type: ignore[attr-defined]
    got = 0
    async for batch in h.batches():
        assert set(batch) == {LINE.rstrip(b"\n")}
        got += len(batch)
    await run
    assert got == total == h.stats.records


def test_a_bomb_of_records_stays_within_64_mib_in_the_daemon(
    tmp_path: Path, daemons: list[Daemon], gzip_feed: Callable[..., GzipFeed]
) -> None:
    blocks = 256  # 256 MiB of records in 0.8 MB of gzip
    total = blocks * (MIB // len(LINE))
    feed = gzip_feed(gzip_of((BLOCK, blocks)), wait_for_go=True)
    daemon = Daemon(tmp_path, "--url", feed.url, "--sink", "file:/dev/null")
    daemons.append(daemon)
    assert feed.answered.wait(20), daemon.output()
    before = rss_bytes(daemon.process.pid, "VmHWM")
    feed.go.set()
    status = wait_for_status(daemon, lambda s: s["records"] == total)
    grown = rss_bytes(daemon.process.pid, "VmHWM") - before
    assert grown < 64 * MIB, f"peak RSS grew {grown} bytes"
    assert status["skipped"] == 0


def test_a_bomb_of_zeros_is_one_skipped_record_within_64_mib(
    tmp_path: Path, daemons: list[Daemon], gzip_feed: Callable[..., GzipFeed]
) -> None:
    zeros = bytes(MIB)
    body = gzip_of((zeros, 256), (b"\n" + LINE, 1))
    feed = gzip_feed(body, wait_for_go=True)
    daemon = Daemon(tmp_path, "--url", feed.url, "--sink", "file:/dev/null")
    daemons.append(daemon)
    assert feed.answered.wait(20), daemon.output()
    before = rss_bytes(daemon.process.pid, "VmHWM")
    feed.go.set()
    status = wait_for_status(daemon, lambda s: s["records"] == 1)
    grown = rss_bytes(daemon.process.pid, "VmHWM") - before
    assert grown < 64 * MIB, f"peak RSS grew {grown} bytes"
    assert status["skipped"] == 1


def test_a_corrupt_gzip_body_is_a_failure_in_words(
    tmp_path: Path, daemons: list[Daemon], gzip_feed: Callable[..., GzipFeed]
) -> None:
    good = gzip_of((LINE, 10))
    feed = gzip_feed(good[:30] + b"\xff" * 64 + good[30:])
    daemon = Daemon(tmp_path, "--url", feed.url, "--no-reconnect")
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 1, daemon.output()
    assert "gzip body does not inflate" in daemon.output()


def wait_for_status(
    daemon: Daemon, done: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        assert daemon.process.poll() is None, daemon.output()
        status = daemon.status()
        if done(status):
            return status
        assert time.monotonic() < deadline, (status, daemon.output())
        time.sleep(0.1)
