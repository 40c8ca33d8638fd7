"""Shared fixtures: real HTTP servers on 127.0.0.1, and the tools to wait on them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from tidehunter_tx.firehose import make_site


@pytest.fixture
def firehose() -> Iterator[str]:
    """The emulator in this process, on a free port; yields its base URL."""
    port = reactor.listenTCP(0, make_site(), interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"
    finally:
        pytest_twisted.blockon(port.stopListening())


def _start_emulator() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidehunter_tx.firehose", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )


class _SpareEmulator:
    """One emulator process started ahead, while the previous test runs.

    Each test still gets a fresh process of its own (the emulator keeps
    counts per process); only the ~0.4 s of its start is taken off the
    test's clock.
    """

    def __init__(self) -> None:
        self._spare: subprocess.Popen[str] | None = None

    def take(self) -> subprocess.Popen[str]:
        proc = self._spare or _start_emulator()
        self._spare = _start_emulator()
        return proc

    def close(self) -> None:
        if self._spare is not None:
            self._spare.terminate()
            self._spare.wait(timeout=10)
            self._spare = None


@pytest.fixture(scope="session")
def _spare_emulator() -> Iterator[_SpareEmulator]:
    spare = _SpareEmulator()
    try:
        yield spare
    finally:
        spare.close()


@pytest.fixture
def firehose_process(_spare_emulator: _SpareEmulator) -> Iterator[str]:
    """The emulator as a separate process, so its memory is not ours."""
    proc = _spare_emulator.take()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# Redis fixtures live with the Redis harness; importing them registers them.
from redis_support import daemons, redis_server, techies, techies_python  # noqa: E402, F401
