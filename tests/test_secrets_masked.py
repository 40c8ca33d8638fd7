"""A server that echoes the request into its error body never gets the
daemon's credentials into its log or its status (a real twistd)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

from support import Daemon, HostileServer

TOKEN = "tok-SECRET-bearer-0123456789"
API_KEY = "key/SECRET value+42"  # percent-encoded on the wire
PASSWORD = "pw-SECRET-basic"


def echoing(status: bytes) -> Any:
    """Answer ``status`` with a body that is the request head, Authorization
    first, so the secrets sit inside the 200-character excerpt."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        auth = [line for line in head if line.lower().startswith(b"authorization")]
        body = b"you sent: " + b" | ".join([*auth, head[0]])
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    return handle


def secrets_in(text: str) -> list[str]:
    encoded = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    return [s for s in (TOKEN, PASSWORD, encoded, "SECRET") if s in text]


def test_a_401_echoing_a_bearer_token_and_query_is_logged_masked(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(echoing(b"401 Unauthorized"))
    try:
        env = {**os.environ, "TIDEHUNTER_BEARER_TOKEN": TOKEN}
        url = f"{server.url}/feed?api_key=key%2FSECRET%20value%2B42"
        daemon = Daemon(tmp_path, "--url", url, "--no-reconnect", env=env)
        daemons.append(daemon)
        assert daemon.wait(timeout=20) == 1, daemon.output()
        output = daemon.output()
        assert "HTTP 401" in output
        assert "you sent: Authorization: Bearer *** | GET /feed?api_key=***" in output
        assert secrets_in(output) == [], output
    finally:
        server.close()


def test_basic_credentials_in_the_url_never_reach_the_log(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(echoing(b"401 Unauthorized"))
    try:
        url = server.url.replace("//", f"//alice:{PASSWORD}@") + "/feed?k=SECRETkey"
        daemon = Daemon(tmp_path, "--url", url, "--no-reconnect")
        daemons.append(daemon)
        assert daemon.wait(timeout=20) == 1, daemon.output()
        output = daemon.output()
        assert "you sent: Authorization: Basic *** | GET /feed?k=***" in output
        assert secrets_in(output) == [], output
    finally:
        server.close()


def test_status_last_error_of_a_busy_server_shows_no_secret(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server = HostileServer(echoing(b"503 Busy"))
    try:
        env = {**os.environ, "TIDEHUNTER_BEARER_TOKEN": TOKEN}
        url = server.url.replace("//", f"//alice:{PASSWORD}@") + "/feed?k=SECRETkey"
        daemon = Daemon(tmp_path, "--url", url, env=env)
        daemons.append(daemon)
        daemon.wait_until_up()
        status = daemon.wait_for(lambda s: bool(s.get("last_error")))
        assert "HTTP 503" in status["last_error"], status
        assert secrets_in(repr(status)) == [], status
        assert secrets_in(daemon.output()) == [], daemon.output()
    finally:
        server.close()
