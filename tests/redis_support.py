"""A real ``redis-server`` that tests start, kill and restart, and techies to read it.

Redis tests never touch the machine's own Redis: each server gets a free
loopback port, a private directory, no persistence, and dies with us.  The RESP
client here is a few dozen lines of stdlib so tests can LRANGE/HGETALL/XRANGE
without adding redis-py to the project.  techies 0.2.0 (the original's Redis
library) cannot live in the project venv (its sdist only builds with redis-py
already installed and ``--no-build-isolation``), so it gets a venv of its own,
created once and reused; snippets run there in a subprocess.

Register the fixtures with ``pytest_plugins = ["redis_support"]`` in
``tests/conftest.py`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from support import Daemon

HOST = "127.0.0.1"
START_TIMEOUT = 10.0

#: What ``command`` returns: str (simple string), int, bytes or None (bulk),
#: a list of those (array), or a ``RedisError`` inside an array.
Reply: TypeAlias = "str | int | bytes | RedisError | list[Reply] | None"
Arg: TypeAlias = "str | bytes | int | float"


class RedisError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


def free_port() -> int:
    """A loopback port nobody listens on right now (there is a race; we retry)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _encode(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    return str(arg).encode()


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespClient:
    """A blocking RESP2 connection: enough to inspect Redis from a test."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: Arg) -> Reply:
        """Send one command; an error reply raises ``RedisError``."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Send every command, then read every reply (one round trip)."""
        data = b"".join(encode_command(c) for c in commands)
        return self.send_encoded(data, len(commands))

    def send_encoded(self, data: bytes, count: int = 1) -> list[Reply]:
        """Send ``count`` commands encoded beforehand; read their replies."""
        self.sock.sendall(data)
        replies = [self._read() for _ in range(count)]
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def _line(self) -> bytes:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        return line[:-2]

    def _read(self) -> Reply:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"not a RESP2 reply: {line[:80]!r}")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (Linux), no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1: start, SIGKILL, restart same port."""

    def __init__(self, binary: str = "redis-server", *, persistent: bool = False):
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"{binary} is not on PATH")
        self.binary = path
        self.dir = Path(tempfile.mkdtemp(prefix="th-redis-"))
        self.log = self.dir / "redis.log"
        self.port = 0
        # Persistent: an append-only file fsynced on every write, so what a
        # client saw acknowledged survives SIGKILL (outage tests need that).
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 5) -> RedisServer:
        """Start on a free port (a new one per attempt: the probe can race)."""
        for _ in range(attempts):
            self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError(f"redis-server would not start: {self._log_tail()}")

    def restart(self) -> None:
        """Start again on the same port, as after a crash (the data is gone)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is still running")
        if not self._launch():
            raise RuntimeError(
                f"redis-server did not come back on {self.port}: {self._log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would; clients see their connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, db: int = 0, key: str | None = None, scheme: str = "redis") -> str:
        """A ``--sink``/``--counter`` spec for this server."""
        query = f"?key={key}" if key is not None else ""
        return f"{scheme}://{HOST}:{self.port}/{db}{query}"

    def client(self) -> RespClient:
        return RespClient(self.port)

    def command(self, *args: Arg) -> Reply:
        """One command on a fresh connection (so it works across restarts)."""
        with self.client() as client:
            return client.command(*args)

    def hgetall(self, key: str) -> dict[str, str]:
        """A hash as text, e.g. ``{"state": "1", "count": "5000", ...}``."""
        reply = self.command("HGETALL", key)
        assert isinstance(reply, list)
        pairs = [x.decode() for x in reply if isinstance(x, bytes)]
        return dict(zip(pairs[::2], pairs[1::2], strict=True))

    def ping(self) -> bool:
        try:
            with RespClient(self.port, timeout=1.0) as client:
                return client.command("PING") == "PONG"
        except (OSError, RedisError):
            return False

    def _launch(self) -> bool:
        """Run redis-server on ``self.port``; True once it answers PING."""
        argv = [
            self.binary,
            *("--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)),
            *("--save", "", "--daemonize", "no"),
            *(
                ("--appendonly", "yes", "--appendfsync", "always")
                if self.persistent
                else ("--appendonly", "no")
            ),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. the port was taken after all
            if self.ping():
                return True
            time.sleep(0.01)
        self.kill()
        return False

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


# techies 0.2.0 in a venv of its own ----------------------------------------

TESTS = Path(__file__).resolve().parent
#: Override with TIDEHUNTER_TECHIES_VENV (e.g. a cache kept between CI runs).
TECHIES_VENV = Path(os.environ.get("TIDEHUNTER_TECHIES_VENV", TESTS / ".venv-techies"))
#: techies' setup.py imports techies, which imports redis: hence two steps.
TECHIES_RECIPE = (
    ("install", "redis", "setuptools", "wheel"),
    ("install", "--no-build-isolation", "techies==0.2.0"),
)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _imports_techies(python: Path) -> bool:
    if not python.exists():
        return False
    probe = [str(python), "-c", "import techies, redis"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ensure_techies(venv: Path = TECHIES_VENV) -> Path:
    """The techies venv's Python, created on first use; RuntimeError says why not.

    A file lock keeps parallel test workers from building it twice.
    """
    python = _venv_python(venv)
    if _imports_techies(python):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _imports_techies(python):
            return python
        shutil.rmtree(venv, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        steps = [[sys.executable, "-m", "venv", str(venv)]]
        steps += [[str(python), "-m", "pip", "-q", *step] for step in TECHIES_RECIPE]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                tail = " | ".join(done.stderr.strip().splitlines()[-5:])
                raise RuntimeError(f"`{shlex.join(step)}` failed: {tail}")
        if not _imports_techies(python):
            raise RuntimeError(f"{python} still cannot import techies")
    return python


class Techies:
    """Runs snippets under techies 0.2.0 against one Redis server.

    The snippet sees ``techies``, ``HOST`` and ``PORT`` already defined, e.g.
    ``techies.Queue(key="q", host=HOST, port=PORT).get()``; what it prints is
    returned.  Note: ``StateCounter.json()``/``str()`` raise AttributeError on
    Python >= 3.10 (``collections.Mapping``); use ``get_count()`` and friends.
    """

    def __init__(self, python: Path, port: int):
        self.python = python
        self.port = port

    def argv(self, snippet: str) -> list[str]:
        prelude = f"import techies\nHOST = {HOST!r}\nPORT = {self.port}\n"
        return [str(self.python), "-c", prelude + textwrap.dedent(snippet)]

    def __call__(self, snippet: str, timeout: float = 60.0) -> str:
        """Run to the end; a failing snippet fails the test with its stderr."""
        done = subprocess.run(
            self.argv(snippet), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"techies snippet failed:\n{done.stderr}")
        return done.stdout

    def popen(self, snippet: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start without waiting: a consumer running beside the daemon."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(snippet), text=True, **kwargs)


# pytest fixtures --------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free port, killed after the test."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def techies_python() -> Path:
    """The techies venv's Python: skipped when it cannot be built, failed on CI."""
    try:
        return ensure_techies()
    except RuntimeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"techies 0.2.0 is required on CI: {error}")
        pytest.skip(f"techies 0.2.0 unavailable: {error}")


@pytest.fixture
def techies(techies_python: Path, redis_server: RedisServer) -> Techies:
    """``techies(snippet)`` runs techies code against ``redis_server``."""
    return Techies(techies_python, redis_server.port)


# -- daemons against Redis


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def hunt(
    daemons: list[Daemon], workdir: Path, url: str, *args: str, **kw: object
) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(workdir, "--url", url, *args, **kw)  # type: ignore[arg-type]
    daemons.append(daemon)
    return daemon


def list_ids(server: RedisServer, key: str) -> list[int]:
    reply = server.command("LRANGE", key, 0, -1)
    assert isinstance(reply, list)
    return [json.loads(item)["id"] for item in reply]  # type: ignore[arg-type]


def wait_until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
