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


@pytest.fixture
def firehose_process() -> Iterator[str]:
    """The emulator as a separate process, so its memory is not ours."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidehunter_tx.firehose", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
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
