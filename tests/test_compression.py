"""What the hunter asks for, and a compressor that buffers (pouchdb-server's)."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from support import Daemon, HostileServer

import tidehunter_tx.hunter
from tidehunter_tx import Hunter, StreamFailed

RECORDS = [b'{"seq": %d}' % i for i in range(20)]


class BufferingCompressor:
    """Answers ``Accept-Encoding: gzip`` as express ``compression`` does for a
    slow stream: the 10-byte gzip header, then it holds everything; any
    other request gets the records uncompressed, and the connection closes."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.server = HostileServer(self.handle)
        self.url = f"{self.server.url}/db/_changes?feed=continuous"

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        asked = [
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("accept-encoding:")
        ]
        self.asked.append(", ".join(asked))
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n")
        if "gzip" in asked:
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
            held = compressor.compress(b"\n".join(RECORDS) + b"\n")
            writer.write(b"Content-Encoding: gzip\r\n\r\n" + held)  # the header only
            await writer.drain()
            await reader.read()  # and holds the rest until the client leaves
        else:
            writer.write(b"\r\n" + b"\n".join(RECORDS) + b"\n")
            await writer.drain()  # and ends the body by closing


@pytest.fixture
def buffering() -> Iterator[BufferingCompressor]:
    server = BufferingCompressor()
    yield server
    server.server.close()


@pytest_twisted.ensureDeferred
async def test_auto_asks_again_without_gzip_when_the_compressor_buffers(
    buffering: BufferingCompressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidehunter_tx.hunter, "STARVED_GZIP_SECONDS", 0.3)
    h = Hunter(buffering.url)
    await h.tide_on(limit=len(RECORDS))
    assert list(h.q.pending) == RECORDS  # type: ignore[attr-defined]
    assert buffering.asked == ["gzip", "identity"]
    assert h.status()["reconnects_by_cause"] == {"compression": 1}


@pytest_twisted.ensureDeferred
async def test_the_fallback_holds_for_the_rest_of_the_run(
    buffering: BufferingCompressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidehunter_tx.hunter, "STARVED_GZIP_SECONDS", 0.3)
    h = Hunter(buffering.url, reconnect=True)
    await h.tide_on(limit=len(RECORDS) * 2)  # two connections' worth
    assert buffering.asked == ["gzip", "identity", "identity"]


@pytest_twisted.ensureDeferred
async def test_identity_never_asks_for_gzip(buffering: BufferingCompressor) -> None:
    h = Hunter(buffering.url, compression="identity")
    await h.tide_on(limit=len(RECORDS))
    assert buffering.asked == ["identity"]


@pytest_twisted.ensureDeferred
async def test_gzip_waits_on_the_compressor_and_never_falls_back(
    buffering: BufferingCompressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidehunter_tx.hunter, "STARVED_GZIP_SECONDS", 0.1)
    h = Hunter(buffering.url, compression="gzip", stall_timeout=0.6)
    stalled = r"broke after 0 records: .*no byte for 0.6 s \(stall timeout\)"
    with pytest.raises(StreamFailed, match=stalled):
        await h.tide_on(limit=len(RECORDS))
    assert buffering.asked == ["gzip"]
    assert h.stats.records == 0


@pytest_twisted.ensureDeferred
async def test_the_users_accept_encoding_replaces_ours(firehose: str) -> None:
    h = Hunter(f"{firehose}/stream/1", headers={"Accept-Encoding": "identity"})
    await h.tide_on()
    headers = json.loads(h.q.pending[0])["headers"]  # type: ignore[attr-defined]
    assert headers["Accept-Encoding"] == "identity"


def test_an_unknown_compression_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="auto, gzip, identity"):
        Hunter("http://127.0.0.1:1/", compression="br")


def test_the_daemon_works_out_of_the_box_against_a_buffering_compressor(
    tmp_path: Path, daemons: list[Daemon], buffering: BufferingCompressor
) -> None:
    out = tmp_path / "changes.jsonl"
    daemon = Daemon(
        tmp_path,
        "--url",
        buffering.url,
        "--limit",
        str(len(RECORDS)),
        "--sink",
        f"file:{out}",
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=30) == 0, daemon.output()  # after 5 s on gzip
    assert out.read_bytes().splitlines() == RECORDS
    assert buffering.asked == ["gzip", "identity"]
    assert "gzip body gave no byte in 5 s" in daemon.output()
    assert "asking again without compression" in daemon.output()


def test_the_daemon_with_compression_identity_never_asks_for_gzip(
    tmp_path: Path, daemons: list[Daemon], buffering: BufferingCompressor
) -> None:
    daemon = Daemon(
        tmp_path,
        "--url",
        buffering.url,
        "--limit",
        str(len(RECORDS)),
        "--sink",
        f"file:{tmp_path / 'out'}",
        "--compression",
        "identity",
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert buffering.asked == ["identity"]


@pytest_twisted.ensureDeferred
async def test_auto_falls_back_against_the_emulators_buffering_gzip(
    firehose: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidehunter_tx.hunter, "STARVED_GZIP_SECONDS", 0.3)
    h = Hunter(f"{firehose}/firehose?count=10&size=60&rate=10&gzip=1&gzip_buffer=1")
    await h.tide_on(limit=10)
    assert [json.loads(r)["id"] for r in h.q.pending] == list(range(10))  # type: ignore[attr-defined]
    assert h.status()["reconnects_by_cause"] == {"compression": 1}
