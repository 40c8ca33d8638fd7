"""Helpers for tests: waiting on the reactor, reading JSON, measuring memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(interval)


async def get_json(url: str) -> Any:
    response = await treq.get(url, persistent=False)
    return json.loads(await response.content())


def rss_bytes(pid: int | None = None, field: str = "VmRSS") -> int:
    """A process's resident set size (this one's by default), from /proc;
    ``field="VmHWM"`` gives its peak so far."""
    with open(f"/proc/{pid or os.getpid()}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid or 'self'}/status")


class HostileServer:
    """A few lines of asyncio on 127.0.0.1, in a thread: ``handle(reader,
    writer)`` is whatever a hostile peer does with each connection."""

    def __init__(self, handle: Any) -> None:
        self.connections = 0
        self._handle = handle
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the hostile server never started"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            self.connections += 1
            try:
                await self._handle(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = self._loop.run_until_complete(
            asyncio.start_server(serve, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready.set()
        self._loop.run_forever()
        server.close()

    def close(self) -> None:
        def cancel_then_stop() -> None:
            # Handlers still waiting get to close their sockets first.
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(cancel_then_stop)
        self._thread.join(10)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given points (taken modulo its length + 1)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def feed_all(framer: Any, chunks: list[bytes]) -> list[bytes]:
    """Every record a framer returns for these chunks, in order."""
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


BIN = Path(sys.executable).parent
#: The console scripts a user runs, from the same environment as the tests.
TWISTD = [str(BIN / "twistd"), "-n", "--pidfile="]
CTL = str(BIN / "tidehunter-ctl")


class Daemon:
    """A real ``twistd -n tidehunter`` process, steered with ``tidehunter-ctl``."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        control: str | None = None,
        env: dict[str, str] | None = None,
        twistd_args: tuple[str, ...] = (),
    ):
        self.workdir = workdir
        self.control = control or f"unix:{workdir / 'th.sock'}:mode=600"
        self.log = workdir / "daemon.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    *TWISTD,
                    *twistd_args,
                    "tidehunter",
                    *args,
                    "--control",
                    self.control,
                ],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ctl(
        self, *args: str, secret_file: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--secret-file", secret_file] if secret_file else []
        return subprocess.run(
            [CTL, "--control", self.control, *extra, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def status(self, **kwargs: Any) -> dict[str, Any]:
        result = self.ctl("status", **kwargs)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def wait_until_up(self, timeout: float = 15.0) -> None:
        """Poll until the control socket answers (or the daemon died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            if self.ctl("status").returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"the daemon never answered: {self.output()}")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s: {status}")

    def wait(self, timeout: float = 15.0) -> int:
        return self.process.wait(timeout=timeout)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
