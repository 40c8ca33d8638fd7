"""Redirects: followed, logged, bounded, and credentials stay with their origin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import Daemon, HostileServer
from twisted.logger import formatEvent, globalLogPublisher

from tidehunter_tx import Hunter


async def redirecting(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``/hops/N/PATH`` redirects N times on this origin, then to PATH;
    ``/away/PORT/CODE`` answers CODE to ``/echo`` on port PORT; ``/loop``
    redirects to itself; ``/echo`` answers one JSON line: the request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *header_lines = head.split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    body = b""
    if "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    parts = path.strip("/").split("/")
    if parts[0] == "hops":
        hops = int(parts[1])
        rest = "/".join(parts[2:])
        where = f"/hops/{hops - 1}/{rest}" if hops > 1 else f"/{rest}"
        answer = f"HTTP/1.1 302 Found\r\nLocation: {where}\r\n"
    elif parts[0] == "away":
        answer = (
            f"HTTP/1.1 {parts[2]} Moved\r\n"
            f"Location: http://127.0.0.1:{parts[1]}/echo\r\n"
        )
    elif parts[0] == "loop":
        answer = "HTTP/1.1 301 Moved\r\nLocation: /loop\r\n"
    else:
        seen = {"method": method, "headers": headers, "body": body.decode()}
        line = json.dumps(seen).encode() + b"\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line)
        )
        await writer.drain()
        return
    writer.write(
        (answer + "Content-Length: 9\r\nConnection: close\r\n\r\nredirect\n").encode()
    )
    await writer.drain()


@pytest.fixture
def servers() -> Iterator[tuple[HostileServer, HostileServer]]:
    home, elsewhere = HostileServer(redirecting), HostileServer(redirecting)
    yield home, elsewhere
    home.close()
    elsewhere.close()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def seen(h: Hunter) -> dict[str, Any]:
    (record,) = h.q.pending  # type: ignore[attr-defined]
    return dict(json.loads(record))


@pytest_twisted.ensureDeferred
async def test_same_origin_redirects_keep_headers_and_are_logged(
    servers: tuple[HostileServer, HostileServer], logged: list[str]
) -> None:
    home, _ = servers
    h = Hunter(
        f"{home.url}/hops/3/echo?api_key=SECRET",
        headers={"X-Api-Key": "k-123"},
        auth=("ann", "pw"),
    )
    await h.tide_on(limit=1)
    request = seen(h)
    assert request["headers"]["X-Api-Key"] == "k-123"
    assert request["headers"]["Authorization"].startswith("Basic ")
    redirects = [line for line in logged if "redirect from" in line]
    assert len(redirects) == 3
    assert redirects[0] == (
        f"tidehunter: HTTP 302 redirect from {home.url}/hops/3/echo?api_key=***"
        f" to {home.url}/hops/2/echo?api_key=***"
    )
    assert not any("SECRET" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_another_origin_gets_none_of_the_users_headers_or_credentials(
    servers: tuple[HostileServer, HostileServer], logged: list[str]
) -> None:
    home, elsewhere = servers
    h = Hunter(
        f"{home.url}/away/{elsewhere.port}/307",
        headers={"X-Api-Key": "k-123", "Cookie": "session=1"},
        auth=("ann", "pw"),
    )
    await h.tide_on(limit=1)
    headers = seen(h)["headers"]
    assert "X-Api-Key" not in headers and "Cookie" not in headers
    assert "Authorization" not in headers
    assert headers["User-Agent"].startswith("tidehunter-tx/")
    assert any("another origin" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_keep_headers_sends_them_to_another_origin_when_asked(
    servers: tuple[HostileServer, HostileServer],
) -> None:
    home, elsewhere = servers
    h = Hunter(
        f"{home.url}/away/{elsewhere.port}/302",
        headers={"X-Api-Key": "k-123"},
        redirect_keep_headers=True,
    )
    await h.tide_on(limit=1)
    assert seen(h)["headers"]["X-Api-Key"] == "k-123"


@pytest_twisted.ensureDeferred
async def test_307_keeps_the_method_and_body_and_303_turns_to_get(
    servers: tuple[HostileServer, HostileServer],
) -> None:
    home, elsewhere = servers
    kept = Hunter(
        f"{home.url}/away/{elsewhere.port}/307", method="POST", data=b'{"key": 1}'
    )
    await kept.tide_on(limit=1)
    assert (seen(kept)["method"], seen(kept)["body"]) == ("POST", '{"key": 1}')
    turned = Hunter(
        f"{home.url}/away/{elsewhere.port}/303", method="POST", data=b'{"key": 1}'
    )
    await turned.tide_on(limit=1)
    assert (seen(turned)["method"], seen(turned)["body"]) == ("GET", "")


@pytest_twisted.ensureDeferred
async def test_a_redirect_loop_ends_after_max_redirects(
    servers: tuple[HostileServer, HostileServer],
) -> None:
    home, _ = servers
    h = Hunter(f"{home.url}/loop", max_redirects=4)
    with pytest.raises(Exception) as raised:
        await h.tide_on(limit=1)
    assert "more than 4 redirects (the last to" in str(raised.value)
    assert home.connections == 5


@pytest_twisted.ensureDeferred
async def test_redirects_within_the_limit_are_followed(
    servers: tuple[HostileServer, HostileServer],
) -> None:
    home, _ = servers
    h = Hunter(f"{home.url}/hops/10/echo")  # the default limit: 10
    await h.tide_on(limit=1)
    assert seen(h)["method"] == "GET"


def test_the_daemon_logs_redirects_and_stops_a_loop_at_max_redirects(
    tmp_path: Path, daemons: list[Daemon], servers: tuple[HostileServer, HostileServer]
) -> None:
    home, _ = servers
    daemon = Daemon(
        tmp_path, "--url", f"{home.url}/loop", "--max-redirects", "2", "--no-reconnect"
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 1, daemon.output()
    output = daemon.output()
    assert (
        output.count(f"HTTP 301 redirect from {home.url}/loop to {home.url}/loop") == 2
    )
    assert "more than 2 redirects" in output
    assert home.connections == 3


def test_the_daemon_sends_no_header_to_another_origin(
    tmp_path: Path, daemons: list[Daemon], servers: tuple[HostileServer, HostileServer]
) -> None:
    home, elsewhere = servers
    out = tmp_path / "out.jsonl"
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{home.url}/away/{elsewhere.port}/302",
        "--header",
        "X-Api-Key: k-123",
        "--limit",
        "1",
        "--sink",
        f"file:{out}",
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 0, daemon.output()
    assert "X-Api-Key" not in json.loads(out.read_bytes())["headers"]
    assert "another origin" in daemon.output()


@pytest_twisted.ensureDeferred
async def test_the_emulators_redirect_chain_is_followed(
    firehose: str, logged: list[str]
) -> None:
    h = Hunter(f"{firehose}/redirect/3?to=/stream/2")
    await h.tide_on(limit=2)
    assert len(h.q.pending) == 2  # type: ignore[attr-defined]
    assert len([line for line in logged if "HTTP 302 redirect from" in line]) == 3
