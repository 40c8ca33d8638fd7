"""A control endpoint that is someone else's: the daemon refuses to start.

Streaming on without control would leave ``tidehunter-ctl stop`` stopping
the other daemon, so the refusal comes before the feed is asked for: the
feed here is a bare listening socket, whose backlog shows any connection.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import free_port
from support import BIN, TWISTD, Daemon


@pytest.fixture
def feed() -> Iterator[socket.socket]:
    """A feed that never answers; ``connections(feed)`` counts who came."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.setblocking(False)
        yield server


def connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def feed_url(server: socket.socket) -> str:
    return f"http://127.0.0.1:{server.getsockname()[1]}/firehose"


def run_daemon(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(exist_ok=True)
    return subprocess.run(
        [*TWISTD, "tidehunter", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=workdir,
    )


def test_a_second_daemon_on_a_held_socket_exits_1_before_the_feed(
    firehose_process, tmp_path, feed
):
    sock = tmp_path / "th.sock"
    control = f"unix:{sock}:mode=600:lockfile=1"
    (tmp_path / "first").mkdir()
    first = Daemon(
        tmp_path / "first",
        *("--url", f"{firehose_process}/firehose?rate=200&size=60"),
        *("--sink", f"file:{tmp_path / 'first' / 'out.jsonl'}"),
        control=control,
    )
    try:
        first.wait_until_up()
        second = run_daemon(
            tmp_path / "second", "--url", feed_url(feed), "--control", control
        )
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        line = (
            f"control socket {sock} is held by another daemon (pid {first.process.pid})"
        )
        assert output.count(line) == 1, output
        assert "Traceback" not in output and "Unhandled" not in output, output
        assert "streaming" not in output, output
        assert connections(feed) == 0
        # The first daemon keeps its socket, and stop still reaches it.
        before = first.status()["count"]
        first.wait_for(lambda status: status["count"] > before)
        assert first.ctl("stop").returncode == 0
        assert first.wait() == 0
    finally:
        first.kill()


def test_a_dead_daemons_lock_and_socket_are_taken_over(firehose_process, tmp_path):
    sock = tmp_path / "th.sock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.symlink(str(dead.pid), f"{sock}.lock")
    with socket.socket(socket.AF_UNIX) as left:  # bound, never unlinked
        left.bind(str(sock))
    daemon = Daemon(
        tmp_path,
        *("--url", f"{firehose_process}/firehose?rate=200&size=60"),
        *("--sink", f"file:{tmp_path / 'out.jsonl'}"),
        control=f"unix:{sock}:mode=600:lockfile=1",
    )
    try:
        daemon.wait_until_up()
        assert os.readlink(f"{sock}.lock") == str(daemon.process.pid)
        assert daemon.ctl("stop").returncode == 0
        assert daemon.wait() == 0
    finally:
        daemon.kill()


def test_a_socket_file_without_a_lock_is_refused_not_removed(tmp_path, feed):
    sock = tmp_path / "th.sock"
    with socket.socket(socket.AF_UNIX) as left:  # bound, never unlinked
        left.bind(str(sock))
    result = run_daemon(
        tmp_path, "--url", feed_url(feed), "--control", f"unix:{sock}:mode=600"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.count(f"control socket {sock} exists") == 1, output
    assert "Traceback" not in output, output
    assert sock.exists()  # no lock names its daemon: it is not ours to remove
    assert not os.path.lexists(f"{sock}.lock")  # nor is a lock left behind
    assert connections(feed) == 0


def test_a_taken_control_port_exits_1_before_the_feed(tmp_path, feed):
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple\n")
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = run_daemon(
            tmp_path,
            *("--url", feed_url(feed)),
            *("--control", f"tcp:{port}:interface=127.0.0.1"),
            *("--control-secret-file", str(secret)),
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.count(f"control port 127.0.0.1:{port} is taken") == 1, output
    assert "Traceback" not in output and "Unhandled" not in output, output
    assert connections(feed) == 0


def test_without_n_the_parent_says_why_and_exits_1(tmp_path, feed):
    """twistd's parent waits for its daemonized child's word: it gets it."""
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple\n")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}"),
                *("tidehunter", "--url", feed_url(feed)),
                *("--control", f"tcp:{port}:interface=127.0.0.1"),
                *("--control-secret-file", str(secret)),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
    assert result.returncode == 1, result.stderr
    assert f"control port 127.0.0.1:{port} is taken" in result.stderr
    assert f"control port 127.0.0.1:{port} is taken" in logfile.read_text()
    deadline = time.monotonic() + 10
    while pidfile.exists():  # the child removes it just after telling
        assert time.monotonic() < deadline, "the pid file stayed"
        time.sleep(0.02)
    assert connections(feed) == 0
