"""Hostile feed servers against a real twistd: bounded memory, clear errors, backoff."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support import Daemon, HostileServer, rss_bytes


async def endless_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\n")
    # Long lines, so the byte bound (64 KiB) is met before the line bound
    # (100) however the reads are split.
    line = b"X-Filler: " + b"x" * 4000 + b"\r\n"
    while True:
        writer.write(line * 25)
        await writer.drain()


async def headers_one_byte_a_second(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1.0)


def wait_for_log(daemon: Daemon, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.output():
        assert daemon.process.poll() is None, daemon.output()
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)


def test_endless_response_headers_are_cut_off_and_backed_off_from(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(endless_headers)
    try:
        daemon = Daemon(tmp_path, "--url", f"{server.url}/feed")
        daemons.append(daemon)
        wait_for_log(daemon, "tidehunter: streaming")
        before = rss_bytes(daemon.process.pid)
        wait_for_log(daemon, "response headers exceeded 65536 bytes")
        cut_off = time.monotonic()
        status = daemon.status()
        assert status["reconnects_by_cause"] == {"http_5xx": 1}
        assert status["backoff"] >= 4.0  # like an HTTP 5xx: 5 s +- 20 %
        time.sleep(2.0)
        assert server.connections == 1  # never reconnected at once
        assert time.monotonic() - cut_off < 4.0
        grown = rss_bytes(daemon.process.pid) - before
        assert grown < 16 * 1024 * 1024, f"RSS grew {grown} bytes"
    finally:
        server.close()


def test_headers_that_never_finish_time_out_in_words(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(headers_one_byte_a_second)
    try:
        daemon = Daemon(
            tmp_path,
            "--url",
            f"{server.url}/feed",
            "--header-timeout",
            "1.5",
            "--no-reconnect",
        )
        daemons.append(daemon)
        assert daemon.wait(timeout=20) == 1, daemon.output()
        output = daemon.output()
        assert "no response headers within 1.5 s" in output
        assert "CancelledError" not in output
    finally:
        server.close()


async def many_short_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 5000)
    await writer.drain()
    await reader.read()


def test_too_many_response_headers_end_the_response_in_words(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(many_short_headers)
    try:
        daemon = Daemon(tmp_path, "--url", f"{server.url}/feed", "--no-reconnect")
        daemons.append(daemon)
        assert daemon.wait(timeout=20) == 1, daemon.output()
        assert "response headers exceeded 100 headers" in daemon.output()
        assert server.connections == 1
    finally:
        server.close()
