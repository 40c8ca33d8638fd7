"""Hostile control clients against a real twistd with TCP control and a secret."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from redis_support import free_port
from support import TWISTD, Daemon, rss_bytes
from twisted.protocols import amp

SECRET = "correct horse battery staple"


def box(**fields: str) -> bytes:
    return amp.AmpBox(**{k: v.encode() for k, v in fields.items()}).serialize()


def guarded(
    firehose_process: str, tmp_path: Path, daemons: list[Daemon], *extra: str
) -> Daemon:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{firehose_process}/firehose?rate=200&size=60",
        "--sink",
        f"file:{tmp_path / 'out.jsonl'}",
        "--control-secret-file",
        str(secret),
        *extra,
        control=f"tcp:{free_port()}:interface=127.0.0.1",
    )
    daemons.append(daemon)
    deadline = time.monotonic() + 15
    while daemon.ctl("status", secret_file=str(secret)).returncode != 0:
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)
    return daemon


def control_socket(daemon: Daemon) -> socket.socket:
    port = int(daemon.control.split(":")[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """What the daemon sends until it hangs up (a reset fails the test: the
    daemon drains what it will not read, so its last answer is not lost)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_pipelined_guesses_end_at_the_first_wrong_secret(
    firehose_process, tmp_path, daemons
):
    daemon = guarded(firehose_process, tmp_path, daemons)
    guesses = b"".join(
        box(_command="Authenticate", _ask=str(n), secret=f"guess-{n}")
        for n in range(1000)
    )
    right = box(_command="Authenticate", _ask="right", secret=SECRET)
    status = box(_command="Status", _ask="status")
    with control_socket(daemon) as sock:
        sock.sendall(guesses + right + status)
        replies = read_all(sock)
    answers = amp.parseString(replies)
    assert [answer[b"_error"] for answer in answers] == [b"0"], replies
    assert answers[0][b"_error_description"] == b"wrong secret"
    assert b"right" not in replies and b"state" not in replies  # never read
    assert daemon.process.poll() is None


def test_boxes_pipelined_behind_a_paced_good_secret_are_answered(
    firehose_process, tmp_path, daemons
):
    daemon = guarded(firehose_process, tmp_path, daemons)
    with control_socket(daemon) as guesser:
        guesser.sendall(box(_command="Authenticate", _ask="1", secret="guess"))
        assert b"wrong secret" in read_all(guesser)
    # Refused just now: the next secret waits for its turn, and what is
    # pipelined behind it waits with it.
    with control_socket(daemon) as sock:
        sock.sendall(
            box(_command="Authenticate", _ask="1", secret=SECRET)
            + box(_command="Status", _ask="2")
        )
        replies = b""
        while replies.count(b"_answer") < 2:
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
    answers = {answer[b"_answer"]: answer for answer in amp.parseString(replies)}
    assert answers[b"2"][b"state"] == b"streaming"


def test_an_endless_box_before_authenticating_is_cut_off(
    firehose_process, tmp_path, daemons
):
    daemon = guarded(firehose_process, tmp_path, daemons)
    before = rss_bytes(daemon.process.pid)
    value = b"v" * 60_000
    with control_socket(daemon) as sock:
        try:
            for n in range(5000):  # 300 MB if it were all read
                key = b"k%d" % n
                sock.sendall(len(key).to_bytes(2, "big") + key)
                sock.sendall(len(value).to_bytes(2, "big") + value)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            raise AssertionError("the daemon read an endless box")
    grown = rss_bytes(daemon.process.pid) - before
    assert grown < 16 * 1024 * 1024, f"RSS grew {grown} bytes"
    assert daemon.status(secret_file=str(tmp_path / "secret"))["state"] == "streaming"


def test_idle_connections_are_capped_and_the_feed_still_answers(
    firehose_process, tmp_path, daemons
):
    daemon = guarded(firehose_process, tmp_path, daemons)
    idle = [control_socket(daemon) for _ in range(100)]
    try:
        time.sleep(0.5)
        closed = 0
        for sock in idle:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                closed += sock.recv(1) == b""
        assert closed >= 100 - 64  # past the cap: closed as they arrive
    finally:
        for sock in idle:
            sock.close()
    status = daemon.status(secret_file=str(tmp_path / "secret"))
    assert status["state"] == "streaming"


def test_a_short_secret_file_is_refused(firehose_process, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    result = subprocess.run(
        [
            *TWISTD,
            "tidehunter",
            "--url",
            f"{firehose_process}/firehose",
            "--control",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--control-secret-file",
            str(secret),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "a secret needs at least 16" in result.stdout + result.stderr


def test_max_control_connections_sets_the_cap(firehose_process, tmp_path, daemons):
    daemon = guarded(
        firehose_process, tmp_path, daemons, "--max-control-connections", "3"
    )
    idle = [control_socket(daemon) for _ in range(5)]
    try:
        for sock in idle[3:]:  # past the cap: closed as they arrive
            assert sock.recv(1) == b""
        # The first three are served.
        idle[0].sendall(
            box(_command="Authenticate", _ask="1", secret=SECRET)
            + box(_command="Status", _ask="2")
        )
        replies = b""
        while b"state" not in replies:
            chunk = idle[0].recv(65536)
            assert chunk, replies
            replies += chunk
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_max_control_connections_is_a_usage_error(tmp_path, value):
    result = subprocess.run(
        [
            *TWISTD,
            "tidehunter",
            *("--url", "http://127.0.0.1:9/"),
            *("--max-control-connections", value),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "--max-control-connections" in result.stdout + result.stderr
