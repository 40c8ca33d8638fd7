"""Real peers the tests start: found where ``make test-peers`` installs them.

A peer test needs a program from outside the venv (pouchdb-server from npm,
nginx from apt).  ``make test-peers`` installs them and runs the tests marked
``peers``; plain ``make test`` runs them too where they are installed and skips
them, with the reason, where they are not.  With ``TIDEHUNTER_REQUIRE_PEERS=1``
(what ``make test-peers`` sets) a missing peer is a failure instead, so an
install that went wrong cannot pass as a row of skips.

Each peer runs on a free loopback port, in a directory of its own, and dies
with the test process (PDEATHSIG) if the test is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from redis_support import _die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
#: Where ``make test-peers`` puts what it installs with npm (never committed).
PEERS = ROOT / ".peers"
START_TIMEOUT = 20.0


def find_peer(name: str, *candidates: Path) -> str:
    """The path of ``name``: ``candidates`` first, then ``PATH``; else skip."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is not None:
        return found
    reason = f"{name} is not installed (`make test-peers` installs it)"
    if os.environ.get("TIDEHUNTER_REQUIRE_PEERS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class Peer:
    """One peer process: ``argv(port)`` started in ``workdir`` until ``ready(port)``.

    A port that turned out to be taken (the process exits) is tried again with
    another one.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        argv: Callable[[int], Sequence[str]],
        ready: Callable[[int], bool],
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.log = workdir / f"{name}.out"
        self._argv = argv
        self._ready = ready
        self._env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 3) -> Peer:
        for _ in range(attempts):
            self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError(f"{self.name} would not start: {self.output()[-2000:]}")

    def _launch(self) -> bool:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                list(self._argv(self.port)),
                cwd=self.workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._ready(self.port):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` (blocking) until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
